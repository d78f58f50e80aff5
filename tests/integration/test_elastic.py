"""Elastic training under fault injection, on real LocalClusters with worker processes.

Each disturbed fit is compared with one undisturbed fit of the same seed (computed once
per module, with every epoch's checkpoint kept so any epoch count can be compared): it
must finish, with test accuracy within one point, every checkpoint loadable, no rank left
hanging, and Recovered/Resized events that say what the disturbance cost. Run with
``-s`` to see the measured downtimes and lost steps::

    pytest tests/integration/test_elastic.py -s -m slow

The workload (digits x4, an MLP 64-256-256-10, global batch 64: 85 steps an epoch)
takes about a second an epoch on two workers, so faults land mid-epoch. Fits that
disturb workers run on a cluster of their own (the nanny restarts killed workers, whose
new processes the leak check would otherwise count); the rest share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import dask.config
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn
from training_models import DeadlockOnce, HoldWhileFileExists, WideMLP, digits_x4, slow_store

import scalekit as sk
from scalekit.errors import UsageError
from scalekit.events import (
    CheckpointSaved,
    EpochEnded,
    Notice,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    RunStarted,
)
from scalekit.training import state as training_state
from scalekit.training.checkpoint import POINTER, CheckpointStore
from scalekit.training.rounds import warm_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits_x4()
EPOCHS = 12  # the disturbed fits
REFERENCE_EPOCHS = EPOCHS  # the undisturbed fit (>= every disturbed fit's epochs)
BATCHES = -(-len(X_TRAIN) // 64)  # steps per epoch
TOLERANCE = 0.01  # one point of test accuracy
FIT_TIMEOUT = 240  # seconds a disturbed fit may take on a busy two-core machine


def make_net(max_epochs=EPOCHS, **kwargs):
    torch.manual_seed(0)  # the same initial weights for every net
    return NeuralNetClassifier(
        WideMLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.05,
        optimizer__momentum=0.9, batch_size=64, max_epochs=max_epochs,
        iterator_train__shuffle=True, train_split=None, verbose=0, **kwargs,
    )


def accuracy(net):
    return float(net.score(X_TEST, Y_TEST))


def report(line):
    print(f"\n[elastic] {line}", flush=True)


# -- the undisturbed reference -------------------------------------------------------------


@dataclasses.dataclass
class Reference:
    url: str
    losses: list[float]  # train_loss per epoch
    seconds: float
    _accuracy: dict[int, float] = dataclasses.field(default_factory=dict)

    def accuracy(self, epochs):
        """Test accuracy of the undisturbed fit after ``epochs`` epochs."""
        if epochs not in self._accuracy:
            path = Path(self.url) / f"ckpt-{epochs:06d}-00000000.pt"
            state = torch.load(path, weights_only=True)
            net = make_net().initialize()
            training_state.restore(net, state)
            self._accuracy[epochs] = accuracy(net)
        return self._accuracy[epochs]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A two-worker cluster for fits that do not disturb it."""
    root = tmp_path_factory.mktemp("elastic-default-checkpoints")
    with dask.config.set({"scalekit.checkpoint.root": str(root)}):
        session = sk.cluster(workers=2)
        try:
            session.wait_for_workers(2, timeout=120)
            yield session
        finally:
            session.close()


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("reference") / "ckpt")
    started = time.monotonic()
    with dask.config.set({"scalekit.checkpoint.keep": 1000}):
        # on one worker: the batch order and the SGD steps do not depend on the world
        # size, and one process is the quickest on a two-core machine
        run = sk.fit(make_net(REFERENCE_EPOCHS), X_TRAIN, Y_TRAIN, cluster=shared,
                     checkpoint=url, show=False, max_workers=1)
    ref = Reference(url=url, losses=list(run.net.history[:, "train_loss"]),
                    seconds=time.monotonic() - started)
    ref._accuracy[REFERENCE_EPOCHS] = accuracy(run.net)
    report(f"undisturbed reference: {REFERENCE_EPOCHS} epochs on 1 worker in "
           f"{ref.seconds:.1f}s, accuracy {ref.accuracy(EPOCHS):.4f} after {EPOCHS} epochs")
    assert ref.accuracy(EPOCHS) > 0.9
    return ref


# -- clusters for the disturbed fits ---------------------------------------------------------


@pytest.fixture
def session(request, tmp_path):
    """A cluster of its own (``workers`` via indirect parametrisation, default 2)."""
    workers = getattr(request, "param", 2)
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "default-ckpt")}):
        s = sk.cluster(workers=workers)
        try:
            s.wait_for_workers(workers, timeout=120)
            yield s
        finally:
            s.close()


# -- helpers -------------------------------------------------------------------------------


def wait_until(condition, timeout, what, run=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if run is not None and run.done:
            run.wait()  # raises the run's error, if any
            raise AssertionError(f"the fit ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def of(run, kind):
    return [e for e in list(run.events) if isinstance(e, kind)]


def ranks(run):
    """The newest generation's ranks -> worker addresses (from RankStatus events)."""
    statuses = [e for e in of(run, RankStatus) if e.state in ("rendezvous", "training")]
    if not statuses:
        return {}
    newest = max(e.generation for e in statuses)
    return {e.rank: e.worker for e in statuses if e.generation == newest}


MID_EPOCH = BATCHES // 3  # where HoldWhileFileExists(at_batch=...) stops the ranks


def saved_epochs(run):
    return max((e.epoch for e in of(run, CheckpointSaved)), default=0)


class MidEpochHold:
    """Stops every rank of a fit after step ``MID_EPOCH`` of an epoch, so a fault lands
    mid-epoch on two ranks however fast the machine trains (a fault timed by progress
    events missed its window once epochs got shorter than the event interval)."""

    def __init__(self, path):
        self.path = Path(path)
        self.callback = ("hold-mid", HoldWhileFileExists(self.path, at_batch=MID_EPOCH))

    def stop(self, run, after_epochs=0, world=2):
        """Wait until the ranks hold mid-epoch, in an epoch after the first
        ``after_epochs`` (so that a checkpoint exists), with ``world`` of them; returns
        the number of epochs checkpointed before the held one."""
        wait_until(lambda: saved_epochs(run) >= after_epochs, FIT_TIMEOUT,
                   f"{after_epochs} epochs", run)
        held = Path(f"{self.path}.held")
        held.unlink(missing_ok=True)
        self.path.touch()
        wait_until(lambda: held.exists() and len(ranks(run)) == world, FIT_TIMEOUT,
                   f"a hold mid-epoch on {world} ranks", run)
        return saved_epochs(run)

    def release(self):
        self.path.unlink(missing_ok=True)


def pid_of(session, address):
    return session.client.run(os.getpid, workers=[address])[address]


def assert_finished_like_the_reference(run, reference, epochs=EPOCHS):
    net = run.wait(timeout=FIT_TIMEOUT)
    assert run.status == "finished"
    assert net.history[:, "epoch"] == list(range(1, epochs + 1))
    # every epoch took all of its steps once, whatever happened in it
    assert net.history[:, "train_batch_count"] == [BATCHES] * epochs
    got, expected = accuracy(net), reference.accuracy(epochs)
    report(f"accuracy {got:.4f} (undisturbed: {expected:.4f})")
    assert abs(got - expected) <= TOLERANCE, (got, expected)
    finished = of(run, RunFinished)
    assert [(e.status, e.epochs) for e in finished] == [("finished", epochs)]


def assert_checkpoints_intact(url, epochs=EPOCHS):
    """latest.json names the newest checkpoint, it matches its digest, and every kept
    checkpoint loads without pickle."""
    store = CheckpointStore(url)
    pointer = store.latest_info()
    assert pointer is not None and pointer["name"] in store.names()
    assert (pointer["epoch"], pointer["step"]) == (epochs, 0)
    data = (Path(url) / pointer["name"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == pointer["sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged checkpoint skipped
        state, info = store.load_latest()
    assert info.name == pointer["name"] and state["epoch"] == epochs
    for name in store.names():
        torch.load(Path(url) / name, weights_only=True)
    return store


def assert_no_rank_left(session, timeout=60):
    """No training task still running anywhere, and every worker answers."""
    client = session.client
    wait_until(lambda: not any(
        "scalekit-rank" in str(key) for keys in client.processing().values() for key in keys),
        timeout, "the rank tasks to end")
    pids = client.run(os.getpid)
    assert pids and all(isinstance(p, int) for p in pids.values())


class PointerWatch(threading.Thread):
    """Reads latest.json and the checkpoint it names, again and again, while a fit runs:
    every reading must name a complete file whose SHA-256 matches."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.folder = Path(folder)
        self.checked = 0
        self.problems = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(0.1):
            try:
                raw = (self.folder / POINTER).read_bytes()
            except FileNotFoundError:
                continue  # nothing saved yet
            try:
                pointer = json.loads(raw)
                data = (self.folder / pointer["name"]).read_bytes()
            except FileNotFoundError:
                # pruned just after a newer pointer replaced this one: fine only then
                if (self.folder / POINTER).read_bytes() == raw:
                    self.problems.append(f"latest.json names a missing file: {raw!r}")
                continue
            except (ValueError, KeyError) as exc:
                self.problems.append(f"unreadable latest.json {raw!r}: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
                self.problems.append(f"{pointer['name']} does not match latest.json")
            else:
                self.checked += 1

    def stop(self):
        self._halt.set()
        self.join(10)


def recoveries(run):
    found = of(run, Recovered)
    for e in found:
        report(f"recovered ({e.reason}): training again after {e.downtime_s:.2f}s on "
               f"{e.world_size} worker(s), from epoch {e.epoch} step {e.step}, "
               f"lost {e.lost_steps} steps")
        assert e.downtime_s >= 0 and e.lost_steps >= 0
    return found


# -- kill a worker, twice in one fit ----------------------------------------------------------


def test_killing_workers_mid_epoch_twice_in_one_fit(session, reference, tmp_path):
    url = str(tmp_path / "ckpt")
    hold = tmp_path / "hold"
    watch = PointerWatch(url)
    watch.start()
    mid = MidEpochHold(tmp_path / "hold-mid")
    run = sk.fit(make_net(callbacks=[("hold", HoldWhileFileExists(hold)), mid.callback]),
                 X_TRAIN, Y_TRAIN, cluster=session, checkpoint=url, wait=False, show=False)
    kills = []

    def kill_a_rank(n, after_epochs):
        done = mid.stop(run, after_epochs)
        world = ranks(run)
        pid = pid_of(session, world[1])
        os.kill(pid, signal.SIGKILL)
        kills.append(time.time())
        mid.release()
        report(f"kill #{n}: SIGKILL rank 1 of 2 (pid {pid}) at epoch {done + 1}, "
               f"step {MID_EPOCH}/{BATCHES}")
        wait_until(lambda: len(of(run, Recovered)) >= n, FIT_TIMEOUT, f"recovery #{n}", run)

    try:
        kill_a_rank(1, 2)
        # the survivor trains on alone; hold it at the next epoch end until the nanny's
        # replacement for the killed worker is up and warm (on one worker an epoch is
        # short, and starting a worker process on a busy machine is not)
        hold.touch()
        wait_until(lambda: Path(f"{hold}.held").exists(), FIT_TIMEOUT, "an epoch end", run)
        session.wait_for_workers(2, timeout=180)
        for address in set(session.client.nthreads()) - set(ranks(run).values()):
            session.client.submit(warm_worker, workers=[address], allow_other_workers=False,
                                  pure=False).result(timeout=180)
        hold.unlink()
        wait_until(lambda: of(run, Resized), FIT_TIMEOUT, "the replacement to join", run)
        kill_a_rank(2, of(run, Resized)[-1].epoch)
        assert_finished_like_the_reference(run, reference)
    finally:
        hold.unlink(missing_ok=True)
        mid.release()
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
        watch.stop()
    assert watch.checked > 0 and not watch.problems, watch.problems
    found = recoveries(run)
    assert len(found) == 2
    for killed_at, event in zip(kills, found, strict=True):
        assert event.time >= killed_at
        # from the end of the epoch before the kill (one checkpoint interval) to the
        # step where the survivor's collective broke
        assert event.lost_steps == MID_EPOCH, event
        assert event.downtime_s < 10, event  # the survivor goes on at once
    resized = of(run, Resized)
    assert (resized[0].old, resized[0].new) == (1, 2)  # the replacement joined
    assert_checkpoints_intact(url)
    assert_no_rank_left(session)
    session.wait_for_workers(2, timeout=120)  # the nanny replaced the second one too


# -- a hung rank -------------------------------------------------------------------------------


def test_a_stopped_rank_is_found_within_seconds_and_the_fit_goes_on(session, reference, tmp_path):
    url = str(tmp_path / "ckpt")
    mid = MidEpochHold(tmp_path / "hold-mid")
    run = sk.fit(make_net(callbacks=[mid.callback]), X_TRAIN, Y_TRAIN, cluster=session,
                 checkpoint=url, wait=False, show=False)
    pid = None
    try:
        done = mid.stop(run, after_epochs=2)
        world = ranks(run)
        pid = pid_of(session, world[1])
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        mid.release()
        report(f"SIGSTOP rank 1 (pid {pid}) at epoch {done + 1}, step {MID_EPOCH}/{BATCHES}")
        notice = wait_until(
            lambda: [e for e in of(run, Notice) if "hung" in e.message and e.time > stopped_at],
            60, "the hang to be noticed", run)[0]
        detected = notice.time - stopped_at
        report(f"hang detected after {detected:.2f}s: {notice.message}")
        assert_finished_like_the_reference(run, reference)
    finally:
        mid.release()
        if pid is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):  # never leave a stopped process
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
    assert detected < 10  # the target; gloo alone would wait 30 minutes
    found = recoveries(run)
    assert len(found) == 1 and "hung" in found[0].reason
    assert found[0].lost_steps <= BATCHES
    report(f"hung rank: detected {detected:.2f}s, training again "
           f"{found[0].downtime_s:.2f}s later, {found[0].lost_steps} steps lost")
    assert_checkpoints_intact(url)
    assert_no_rank_left(session)


def test_a_rank_deadlocked_in_its_own_code_is_named_not_its_waiting_peer(
        session, reference, tmp_path):
    """Rank 1 blocks on a lock in a callback: its beacon goes on beating, rank 0 waits in
    the all-reduce. The stuck rank is found by its step standing still while its peer
    waits (scalekit.training.stall-timeout), named, ended and the fit recovers; the
    collective timeout (60 s) would have blamed the healthy rank 0."""
    url = str(tmp_path / "ckpt")
    marker = tmp_path / "deadlocked"
    run = sk.fit(make_net(callbacks=[("deadlock", DeadlockOnce(marker, rank=1, epoch=3,
                                                               at_batch=MID_EPOCH))]),
                 X_TRAIN, Y_TRAIN, cluster=session, checkpoint=url, wait=False, show=False)
    try:
        wait_until(marker.exists, FIT_TIMEOUT, "rank 1 to deadlock", run)
        stuck_at = time.time()
        notice = wait_until(
            lambda: [e for e in of(run, Notice) if "hung" in e.message and e.time > stuck_at],
            60, "the stuck rank to be noticed", run)[0]
        detected = notice.time - stuck_at
        report(f"deadlocked rank found after {detected:.2f}s: {notice.message}")
        assert_finished_like_the_reference(run, reference)
    finally:
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
    assert "rank 1 " in notice.message and "rank 0 " not in notice.message
    failed = [e for e in of(run, RankStatus) if e.state == "failed" and e.generation == 0]
    assert 1 in {e.rank for e in failed}  # (rank 0 reports its own abort too)
    assert detected < 10  # the target
    found = recoveries(run)
    assert len(found) == 1 and found[0].lost_steps <= BATCHES
    assert_no_rank_left(session)


# -- a kill during a checkpoint write -------------------------------------------------------------


def test_killing_the_writer_during_a_checkpoint_write_loses_no_checkpoint(
        session, reference, tmp_path):
    folder = tmp_path / "ckpt"
    slow = "ckpt-000003-00000000.pt"  # the save at the end of epoch 3 takes 2 seconds
    store = slow_store(str(folder), slow_names=(slow,), seconds=2.0)
    watch = PointerWatch(folder)
    watch.start()
    run = sk.fit(make_net(), X_TRAIN, Y_TRAIN, cluster=session, checkpoint=store,
                 wait=False, show=False)
    try:
        temporary = wait_until(lambda: [p for p in folder.glob(f".{slow}.*.tmp")
                                        if p.stat().st_size > 0],
                               FIT_TIMEOUT, f"the write of {slow} to begin", run)[0]
        pointer_before = (folder / POINTER).read_bytes()
        writer = ranks(run)[0]  # rank 0 writes the checkpoints
        pid = pid_of(session, writer)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        report(f"SIGKILL rank 0 (pid {pid}) while it wrote {temporary.name} "
               f"({temporary.stat().st_size} bytes so far)")
        # the interrupted write changed nothing that a reader sees
        assert (folder / POINTER).read_bytes() == pointer_before
        assert CheckpointStore(str(folder)).load_latest()[1].epoch == 2
        wait_until(lambda: of(run, Recovered), FIT_TIMEOUT, "the recovery", run)
        assert_finished_like_the_reference(run, reference)
    finally:
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
        watch.stop()
    # whenever anyone looked, latest.json named a complete, matching checkpoint
    assert watch.checked > 0 and not watch.problems, watch.problems
    report(f"latest.json and its checkpoint read back intact {watch.checked} times")
    found = recoveries(run)
    assert len(found) == 1 and found[0].time >= killed_at
    assert (found[0].epoch, found[0].step) == (2, 0)  # restored from the one before
    assert found[0].lost_steps <= BATCHES
    assert_checkpoints_intact(str(folder))
    saved = [e.epoch for e in of(run, CheckpointSaved)]
    assert saved.count(3) == 1 and saved[-1] == EPOCHS  # epoch 3 saved again, whole
    # the half-written temporary was never taken for a checkpoint, and the next
    # completed save cleared it away
    assert not temporary.exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert_no_rank_left(session)


# -- scale 1 -> 3 -> 1 during a fit ---------------------------------------------------------------


@pytest.mark.parametrize("session", [1], indirect=True)
def test_scaling_1_to_3_to_1_during_a_fit_loses_nothing(session, reference, tmp_path):
    url = str(tmp_path / "ckpt")
    epochs = EPOCHS
    # the fit waits at the end of epoch 1 until the new workers have started and
    # imported torch (on one worker an epoch is short; starting a worker process on a
    # busy two-core machine is not, and the fit only grows once they are warm)
    hold = tmp_path / "hold"
    hold.touch()
    run = sk.fit(make_net(epochs, callbacks=[("hold", HoldWhileFileExists(hold))]),
                 X_TRAIN, Y_TRAIN, cluster=session, checkpoint=url, wait=False, show=False)
    try:
        wait_until(lambda: Path(f"{hold}.held").exists(), FIT_TIMEOUT, "epoch 1 to end", run)
        first = set(session.client.nthreads())
        asked_up = time.time()
        session.scale(3)
        session.wait_for_workers(3, timeout=180)
        new = sorted(set(session.client.nthreads()) - first)
        warm = [session.client.submit(warm_worker, workers=[a], allow_other_workers=False,
                                      pure=False) for a in new]
        session.client.gather(warm)
        report(f"3 workers connected and warm {time.time() - asked_up:.1f}s after asking")
        hold.unlink()
        wait_until(lambda: any(e.new == 3 for e in of(run, Resized)), FIT_TIMEOUT,
                   "the world to grow to 3", run)
        grown = [e for e in of(run, Resized) if e.new == 3][0]
        report(f"scale 1 -> 3: world 3 from epoch {grown.epoch + 1}, "
               f"{grown.time - asked_up:.1f}s after asking")
        wait_until(lambda: any(e.world_size == 3 for e in of(run, EpochEnded)), FIT_TIMEOUT,
                   "an epoch on 3 workers", run)
        asked_down = time.time()
        session.scale(1)
        wait_until(lambda: any(e.new == 1 for e in of(run, Resized)), FIT_TIMEOUT,
                   "the world to shrink to 1", run)
        shrunk = [e for e in of(run, Resized) if e.new == 1][0]
        report(f"scale 3 -> 1: world 1 from epoch {shrunk.epoch + 1}, "
               f"{shrunk.time - asked_down:.1f}s after asking")
        assert_finished_like_the_reference(run, reference, epochs)
    finally:
        hold.unlink(missing_ok=True)
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
    assert not of(run, Recovered)  # planned resizes are not failures
    resized = of(run, Resized)
    for e in resized:
        # a resize happens at an epoch boundary, from the state in memory: nothing lost
        pause = pause_after(run, e)
        report(f"resized {e.old} -> {e.new} after epoch {e.epoch} ({e.reason}): "
               f"training again {pause:.2f}s later, lost {getattr(e, 'lost_steps', 0)} steps")
        assert getattr(e, "lost_steps", 0) == 0
    assert resized[0].old == 1 and resized[-1].new == 1
    assert max(e.new for e in resized) == 3
    sizes = [e.world_size for e in of(run, EpochEnded)]
    report(f"world size per epoch: {sizes}")
    phases = [size for size, _ in itertools.groupby(sizes)]
    assert phases[0] == 1 and 3 in phases and phases[-1] == 1, sizes  # 1 ... 3 ... 1
    assert [e.epoch for e in of(run, EpochEnded)] == list(range(1, epochs + 1))
    assert_checkpoints_intact(url, epochs)
    assert_no_rank_left(session)
    session.wait_for_workers(1, timeout=60)


def pause_after(run, resized):
    """Seconds from a Resized event to the next generation's rank 0 training again."""
    later = [e for e in of(run, RankStatus)
             if e.rank == 0 and e.state == "training" and e.time >= resized.time]
    return later[0].time - resized.time if later else float("nan")


# -- resume after a kernel restart ----------------------------------------------------------------


def test_resume_from_the_checkpoint_url_with_a_new_net(shared, reference, tmp_path):
    url = str(tmp_path / "ckpt")
    first = sk.fit(make_net(4), X_TRAIN, Y_TRAIN, cluster=shared, checkpoint=url, show=False)
    rows_before = [dict(r) for r in first.net.history]
    assert len(rows_before) == 4
    saved_state, info = CheckpointStore(url).load_latest()
    assert info.epoch == 4 and saved_state["optimizer"]["state"]  # momentum buffers

    # "kernel restart": nothing survives but the URL; a new net asks for 8 epochs in all
    net = make_net(8)
    started = time.monotonic()
    run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=shared, checkpoint=url, resume=True,
                 show=False)
    report(f"resumed from epoch 4 to 8 in {time.monotonic() - started:.1f}s")
    assert of(run, RunStarted)[0].start_epoch == 4
    assert [e.epoch for e in of(run, EpochEnded)] == [5, 6, 7, 8]  # only the rest ran
    assert net.history[:, "epoch"] == list(range(1, 9))
    for before, after in zip(rows_before, net.history[:4], strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-12)
        assert after["dur"] == pytest.approx(before["dur"])  # the saved rows themselves
    # the saved optimizer state (momentum) was used: epoch 5 takes the same SGD steps as
    # the undisturbed fit's epoch 5 (with fresh momentum its loss differs by ~7%)
    assert net.history[4, "train_loss"] == pytest.approx(reference.losses[4], rel=1e-3)
    assert net.history[-1, "train_loss"] == pytest.approx(reference.losses[7], rel=1e-2)
    got, expected = accuracy(net), reference.accuracy(8)
    report(f"resumed accuracy {got:.4f} (undisturbed after 8 epochs: {expected:.4f})")
    assert abs(got - expected) <= TOLERANCE
    assert_checkpoints_intact(url, epochs=8)


def test_a_folder_with_checkpoints_is_not_overwritten_without_resume(shared, tmp_path):
    url = tmp_path / "ckpt"
    earlier = CheckpointStore(str(url))  # an earlier fit's checkpoints
    for epoch in (1, 2):
        earlier.save({"format": 1, "epoch": epoch, "step": 0, "run_id": "earlier"}, epoch=epoch)
    (url / ".ckpt-000003-00000000.pt.0badf00d.tmp").write_bytes(b"half a checkpoint")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in url.iterdir()}
    assert POINTER in before

    events = []
    unsubscribe = shared.bus.subscribe(events.append, replay=False)
    try:
        with pytest.raises(UsageError, match="resume=True") as info:
            sk.fit(make_net(3), X_TRAIN, Y_TRAIN, cluster=shared, checkpoint=str(url),
                   show=False)
    finally:
        unsubscribe()
    assert "nothing was changed" in str(info.value)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in url.iterdir()}
    assert after == before
    assert not [e for e in events if isinstance(e, (RunStarted, EpochEnded))]
