"""Runs that outlive the notebook: a detached fit runs on the cluster (a background local
cluster here), survives `kill -9` of the process that started it and a worker killed
while nobody is attached, and any process attaches to it, follows it (also from a
terminal: `scalekit attach`), fetches its net or cancels it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import scalekit as sk
from scalekit import remote_runs
from scalekit.errors import UsageError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

HERE = Path(__file__).parent
NAME = "detached-tests"


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path}


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalekit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env())


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        up = cli("cluster", "up", "--workers", "2", "--name", NAME, "--memory-limit", "1GiB")
        assert up.returncode == 0, up.stderr[-3000:]
        session = sk.cluster(connect=f"local:{NAME}")
        try:
            yield session
        finally:
            session.close()
            assert cli("cluster", "down", "--name", NAME).returncode == 0
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


SUBMITTER = """
import sys, time
import scalekit as sk
from training_models import HoldWhileFileExists, detached_net_and_data

if __name__ == "__main__":
    net, X, y = detached_net_and_data(callbacks=[("hold", HoldWhileFileExists(sys.argv[2]))])
    session = sk.cluster(connect=sys.argv[1])
    run = sk.fit(net, X, y, detach=True, show=False, checkpoint=sys.argv[3])
    print("RUN", run.run_id, flush=True)
    time.sleep(600)  # a kernel that lingers, until it is killed
"""


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return found


def record(session, run_id):
    return {r["run_id"]: r for r in remote_runs.runs(session)}.get(run_id, {})


def worker_pids(session) -> list[int]:
    return sorted(session.client.run(os.getpid).values())


def test_a_detached_fit_outlives_its_kernel_and_a_lost_worker(background, tmp_path):
    session = background
    hold, ckpt = tmp_path / "hold", tmp_path / "ckpt"
    hold.touch()  # the fit waits at each epoch end while this exists
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    kernel = subprocess.Popen([sys.executable, str(script), f"local:{NAME}", str(hold),
                               str(ckpt)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        line = wait_for(lambda: kernel.stdout.readline(), 120, "the run to be submitted")
        run_id = line.split()[1]
        wait_for(lambda: Path(f"{hold}.held").exists(), 120, "the first epoch to end")
        kernel.send_signal(signal.SIGKILL)  # the notebook's kernel dies mid-fit
        kernel.wait(30)
        assert record(session, run_id)["state"] == "running"

        # nobody is attached: a worker dies, and the fit recovers on its own
        victim = psutil.Process(worker_pids(session)[0])
        victim.kill()
        wait_for(lambda: any(e.get("type") == "Recovered" for e in remote_runs._call(
            session.client, "scalekit_runs_events", run_id=run_id)["events"]), 120,
            "the recovery")
        hold.unlink()

        # a new "kernel" (this process) attaches and gets the fitted net
        started = time.monotonic()
        run = sk.attach(run_id, cluster=session)
        attached_after = time.monotonic() - started
        assert any(type(e).__name__ == "RunStarted" for e in run.events)  # the log so far
        net = run.wait(timeout=240)
    finally:
        hold.unlink(missing_ok=True)
        kernel.kill()
    assert run.status == "finished"
    from training_models import detached_net_and_data

    reference, X, y = detached_net_and_data()
    sk.fit(reference, X, y, cluster=session, show=False, checkpoint=False)
    # as good as an undisturbed fit: the recovery redoes steps, and a round may run at
    # another world size while the lost worker's replacement starts (measured up to 2.1
    # points apart after 6 short epochs)
    assert abs(net.score(X, y) - reference.score(X, y)) <= 0.03
    assert len(net.history) == len(reference.history)
    kinds = {type(e).__name__ for e in run.events}
    assert {"RunStarted", "EpochEnded", "Recovered", "RunFinished"} <= kinds
    logged = [json.loads(line) for line in (ckpt / "events.jsonl").read_text().splitlines()]
    assert logged[-1]["type"] == "RunFinished" and logged[-1]["status"] == "finished"
    print(f"\n[detached] attach to a live panel's log in {attached_after:.2f}s")


def test_cancel_is_for_the_owner_unless_forced_and_ends_it_for_everyone(background, tmp_path):
    from training_models import HoldWhileFileExists, detached_net_and_data

    hold = tmp_path / "hold"
    hold.touch()
    net, X, y = detached_net_and_data(callbacks=[("hold", HoldWhileFileExists(hold))])
    mine = sk.fit(net, X, y, cluster=background, detach=True, show=False, checkpoint=False)
    try:
        other = remote_runs.AttachedRun(background.client, mine.run_id, owner="someone@else")
        with pytest.raises(UsageError, match="belongs to .*cancel\\(force=True\\)"):
            other.cancel()
        wait_for(lambda: Path(f"{hold}.held").exists(), 120, "the first epoch to end")
        other.cancel(force=True)
        hold.unlink()
        wait_for(lambda: mine.done and other.done, 60, "both to see the end")
    finally:
        hold.unlink(missing_ok=True)
    assert mine.status == other.status == "cancelled"
    with pytest.raises(Exception, match="cancelled"):
        mine.wait(5)


def test_the_terminal_attaches_with_live_progress_and_the_epoch_log(background, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    from training_models import HoldWhileFileExists, detached_net_and_data

    hold = tmp_path / "hold"
    hold.touch()
    # an earlier test killed a worker: its nanny's new one may still be starting
    background.wait_for_workers(2, timeout=120)
    net, X, y = detached_net_and_data(callbacks=[("hold", HoldWhileFileExists(hold))])
    run = sk.fit(net, X, y, cluster=background, detach=True, show=False, checkpoint=False)
    wait_for(lambda: Path(f"{hold}.held").exists(), 120, "the first epoch to end")
    terminal = pexpect.spawn(sys.executable, ["-m", "scalekit", "attach", run.run_id,
                                              "--connect", f"local:{NAME}"],
                             env=env(), encoding="utf-8", timeout=120, dimensions=(40, 120))
    try:
        terminal.expect(f"run {run.run_id}")  # the progress bar
        terminal.expect(f"fit {run.run_id}: 6 epochs on 2 workers")  # the log so far
        hold.unlink()  # (the hold is before the first epoch's report)
        for epoch in range(1, 7):
            terminal.expect(f"epoch +{epoch}  train_loss")
        terminal.expect(f"fit {run.run_id} finished after 6 epochs")
        terminal.expect(f"run {run.run_id} finished")
        terminal.expect(pexpect.EOF)
    finally:
        hold.unlink(missing_ok=True)
        terminal.close(force=True)
    assert terminal.exitstatus == 0


def test_detach_needs_a_cluster_that_outlives_the_kernel():
    from training_models import detached_net_and_data

    net, X, y = detached_net_and_data()
    with sk.cluster(workers=1, memory_limit="1GiB") as session:
        with pytest.raises(UsageError, match="scalekit cluster up"):
            sk.fit(net, X, y, cluster=session, detach=True, show=False)


def test_attaching_to_an_unknown_run_says_how_to_find_one(background):
    with pytest.raises(UsageError, match=r"no run 'nope' on this cluster; sk.runs\(\)"):
        sk.attach("nope", cluster=background)
