"""``%scalekit`` on a real LocalCluster, in an InteractiveShell and in a real kernel."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import scalekit.magics as magics_module


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def n_workers(session) -> int:
    return len(session.client.nthreads())


def worker_processes(session) -> list[psutil.Process]:
    """The worker processes, each checked to be a descendant of this process."""
    pids = session.client.run(os.getpid).values()
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    assert set(pids) <= mine, "workers should be child processes of this process"
    return [psutil.Process(pid) for pid in pids]


def all_gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "scalekit")
    yield ip
    if "scalekit" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "scalekit")
    magics_module.unload_ipython_extension(ip)  # harmless when already unloaded


def current(ip):
    return magics_module._registered(ip).session


@pytest.mark.timeout(180)
def test_up_scale_bad_scale_status_down(shell, capsys) -> None:
    shell.run_line_magic("scalekit", "up --workers 2 --no-panel")
    session = current(shell)
    assert session is not None and n_workers(session) == 2
    assert "cluster up with 2 workers" in capsys.readouterr().out

    shell.run_line_magic("scalekit", "scale 3")
    wait_until(lambda: n_workers(session) == 3, 30, "3 workers")

    with pytest.raises(UsageError, match="workers: got 0"):
        shell.run_line_magic("scalekit", "scale 0")
    with pytest.raises(UsageError, match="at most maximum"):
        shell.run_line_magic("scalekit", "adapt 5 2")
    time.sleep(1.0)
    assert n_workers(session) == 3
    assert current(shell) is session and not session.closed

    capsys.readouterr()
    shell.run_line_magic("scalekit", "status")
    out = capsys.readouterr().out
    assert out.strip() == repr(session).strip()
    assert "3" in out

    processes = worker_processes(session)
    assert len(processes) == 3
    shell.run_line_magic("scalekit", "down")
    assert session.closed and current(shell) is None
    wait_until(lambda: all_gone(processes), 30, "worker processes to exit")


@pytest.mark.timeout(180)
def test_unload_ext_closes_clusters(shell) -> None:
    shell.run_line_magic("scalekit", "up --workers 1 --no-panel")
    session = current(shell)
    processes = worker_processes(session)
    assert len(processes) == 1
    shell.run_line_magic("unload_ext", "scalekit")
    assert session.closed
    assert "scalekit" not in shell.magics_manager.magics["line"]
    wait_until(lambda: all_gone(processes), 30, "worker processes to exit")


@pytest.mark.timeout(180)
def test_the_magic_steers_a_cluster_started_with_sk_cluster(shell, capsys) -> None:
    """One registry (issue 14): `%scalekit scale` used to say "no cluster is running"."""
    import scalekit as sk

    session = sk.cluster(workers=1)
    try:
        assert current(shell) is session
        shell.run_line_magic("scalekit", "scale 2")
        wait_until(lambda: n_workers(session) == 2, 30, "2 workers")
        capsys.readouterr()
        shell.run_line_magic("scalekit", "status")
        assert capsys.readouterr().out.strip() == repr(session).strip()
        with pytest.raises(UsageError, match="already running"):
            shell.run_line_magic("scalekit", "up --workers 1 --no-panel")
        shell.run_line_magic("unload_ext", "scalekit")
        assert not session.closed  # the magic did not start it: unloading leaves it
        shell.run_line_magic("load_ext", "scalekit")
        processes = worker_processes(session)
        shell.run_line_magic("scalekit", "down")
        assert session.closed and current(shell) is None
        wait_until(lambda: all_gone(processes), 30, "worker processes to exit")
    finally:
        session.close()


KERNEL_CODE = textwrap.dedent(
    """
    import json, os
    %load_ext scalekit
    %scalekit up --workers 1 --no-panel
    from scalekit.magics import _registered
    _s = _registered(get_ipython()).session
    _close = _s.close
    def _close_and_record():
        alive = len(_s.client.nthreads())
        _close()
        with open({marker!r}, "w") as f:
            json.dump({{"workers_alive_at_close": alive}}, f)
    _s.close = _close_and_record
    print(json.dumps(list(_s.client.run(os.getpid).values())))
    """
)


class Kernel:
    """A real ipykernel with ``%scalekit up`` run in it, and the worker processes."""

    def __init__(self, tmp_path, workers: int) -> None:
        jupyter_client = pytest.importorskip("jupyter_client")
        self.marker = tmp_path / "closed.json"
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.kernel_spec.argv[0] = sys.executable  # this venv's interpreter
        self.km.start_kernel(cwd=str(tmp_path))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        code = KERNEL_CODE.format(marker=str(self.marker)).replace("--workers 1",
                                                                  f"--workers {workers}")
        pids = json.loads(self.execute(code).strip().splitlines()[-1])
        self.processes = [psutil.Process(pid) for pid in pids]
        assert len(self.processes) == workers

    def execute(self, code: str) -> str:
        outputs: list[str] = []

        def collect(msg) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                outputs.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                outputs.append("ERROR " + "\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=120, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(outputs)
        return "".join(outputs)

    def closed_with(self) -> dict[str, int]:
        return json.loads(self.marker.read_text())

    def stop(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path):
    made: list[Kernel] = []

    def start(workers: int = 1) -> Kernel:
        made.append(Kernel(tmp_path, workers))
        return made[-1]

    yield start
    for k in made:
        k.stop()


@pytest.mark.timeout(180)
def test_kernel_shutdown_request_closes_the_cluster_before_children_are_killed(kernel) -> None:
    """ipykernel: shutdown_request -> do_shutdown (hooked) -> _at_shutdown kills children."""
    k = kernel(1)
    process = k.km.provisioner.process
    t0 = time.monotonic()
    k.km.request_shutdown()  # the control-channel message alone, as `jupyter console` exit
    k.km.finish_shutdown()  # SIGTERMs the kernel if it is still alive after 2.5 s
    k.km.cleanup_resources()  # close the control socket, or zmq's exit blocks on it
    elapsed = time.monotonic() - t0
    assert k.closed_with() == {"workers_alive_at_close": 1}  # closed while workers lived
    wait_until(lambda: all_gone(k.processes), 30, "worker processes to exit")
    # it exited by itself: nothing (e.g. the SIGTERM-proof resource tracker) held it
    assert process.returncode == 0, f"kernel exit status {process.returncode} ({elapsed:.1f}s)"
    print(f"kernel shutdown with a 1-worker cluster took {elapsed:.2f}s")


@pytest.mark.timeout(180)
def test_jupyter_server_style_shutdown_closes_the_cluster(kernel) -> None:
    """``KernelManager.shutdown_kernel`` (what Jupyter Server calls) interrupts first."""
    k = kernel(1)
    k.km.shutdown_kernel(now=False)
    assert "workers_alive_at_close" in k.closed_with()  # our hook closed the cluster
    wait_until(lambda: all_gone(k.processes), 30, "worker processes to exit")


@pytest.mark.timeout(180)
def test_kernel_interrupt_keeps_the_workers(kernel) -> None:
    k = kernel(2)
    k.km.interrupt_kernel()
    time.sleep(3.0)
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in k.processes)
    assert k.execute("print(len(_s.client.nthreads()))").strip() == "2"
