"""Loading, unloading, kernel shutdown and atexit: which clusters close when."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from IPython.core.interactiveshell import InteractiveShell

import scalekit.magics as magics_module
from scalekit.magics import ScalekitMagics, hooks

from .fakes import run


def test_unload_closes_sessions_and_removes_the_magic(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    magics_module.unload_ipython_extension(shell)
    assert factory.made[0].closed
    assert "scalekit" not in shell.magics_manager.magics["line"]
    assert ScalekitMagics.__name__ not in shell.magics_manager.registry
    magics_module.unload_ipython_extension(shell)  # twice is harmless
    shell.run_line_magic("load_ext", "scalekit")  # and the extension loads again
    assert "scalekit" in shell.magics_manager.magics["line"]


def test_load_is_idempotent(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    again = magics_module.load_ipython_extension(shell)
    assert again is magic and again.session is factory.made[0]


def test_unload_leaves_clusters_started_from_python_running(
    shell, magic, factory, api_session
) -> None:
    run(shell, "scale 3")  # the magic steers it ...
    magics_module.unload_ipython_extension(shell)
    assert not api_session.closed  # ... but only closes what it started
    shell.run_line_magic("load_ext", "scalekit")
    run(shell, "down")
    assert api_session.closed and factory.made == []


class FakeKernel:
    def __init__(self) -> None:
        self.shutdowns: list[tuple[bool, bool]] = []
        self.magic: ScalekitMagics | None = None

    def do_shutdown(self, restart: bool) -> dict[str, object]:
        open_sessions = self.magic is not None and self.magic.session is not None
        self.shutdowns.append((restart, open_sessions))
        return {"status": "ok", "restart": restart}


def test_kernel_shutdown_closes_sessions_first(factory, monkeypatch) -> None:
    steps: list[str] = []  # the process-wide steps, recorded instead of run here
    monkeypatch.setattr(hooks, "_close_api_sessions", lambda: steps.append("api"))
    monkeypatch.setattr(hooks, "_stop_resource_tracker", lambda: steps.append("rt"))
    ip = InteractiveShell.instance()
    kernel = FakeKernel()
    ip.kernel = kernel  # as ipykernel's ZMQInteractiveShell has
    try:
        magic = magics_module.load_ipython_extension(ip, factory=factory, display=print)
        kernel.magic = magic
        assert "do_shutdown" in kernel.__dict__  # the instance attribute shadows the method
        ip.run_line_magic("scalekit", "up --no-panel")
        reply = kernel.do_shutdown(True)  # what ipykernel's shutdown_request calls
        assert reply == {"status": "ok", "restart": True}
        assert factory.made[0].closed
        assert kernel.shutdowns == [(True, False)]  # closed *before* the kernel's own step
        assert steps == ["api", "rt"]
        magics_module.unload_ipython_extension(ip)
        assert "do_shutdown" not in kernel.__dict__  # restored
    finally:
        magics_module.unload_ipython_extension(ip)
        del ip.kernel


def test_kernel_shutdown_closes_every_cluster_of_the_process(
    factory, api_session, monkeypatch
) -> None:
    monkeypatch.setattr(hooks, "_stop_resource_tracker", lambda: None)
    ip = InteractiveShell.instance()
    kernel = FakeKernel()
    ip.kernel = kernel
    try:
        magic = magics_module.load_ipython_extension(ip, factory=factory, display=print)
        kernel.magic = magic
        kernel.do_shutdown(False)
        assert api_session.closed  # the kernel started it too: its workers must not leak
        assert kernel.shutdowns == [(False, False)]
    finally:
        magics_module.unload_ipython_extension(ip)
        del ip.kernel


def test_atexit_hook_is_registered_and_removed(monkeypatch, factory) -> None:
    registered: list[object] = []
    monkeypatch.setattr(hooks.atexit, "register", registered.append)
    monkeypatch.setattr(hooks.atexit, "unregister", registered.remove)
    ip = InteractiveShell.instance()
    magic = magics_module.load_ipython_extension(ip, factory=factory)
    assert registered == [magic.close_all]
    magics_module.unload_ipython_extension(ip)
    assert registered == []


# --- loading is cheap -------------------------------------------------------------------

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    before = set(sys.modules)
    t0 = time.perf_counter()
    ip.run_line_magic("load_ext", "scalekit")
    seconds = time.perf_counter() - t0
    ok = "scalekit" in ip.magics_manager.magics["line"]
    t0 = time.perf_counter()
    ip.run_line_magic("scalekit", "--help")
    help_seconds = time.perf_counter() - t0
    heavy = sorted(
        m for m in sys.modules
        if m.split(".")[0] in ("torch", "distributed", "ipywidgets", "skorch", "sklearn")
    )
    print(json.dumps({"seconds": seconds, "help_seconds": help_seconds, "ok": ok,
                      "heavy": heavy, "new": len(set(sys.modules) - before)}))
    """
)


def test_load_ext_is_light_and_fast(tmp_path, capsys) -> None:
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"]
    assert result["heavy"] == []
    with capsys.disabled():
        print(
            f"\n%load_ext scalekit: {result['seconds'] * 1000:.1f} ms "
            f"({result['new']} new modules); %scalekit --help: "
            f"{result['help_seconds'] * 1000:.1f} ms"
        )
    assert result["seconds"] < 2.0
