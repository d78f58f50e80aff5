"""Registering the comm target in a kernel, by hand and through ``%load_ext scalekit``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

from scalekit import labext

from .fakes import FakeComm, FakeKernel, FakeShell


def test_register_adds_the_comm_target_and_an_unopened_broadcast_comm(monkeypatch) -> None:
    monkeypatch.setattr(labext, "_BRIDGE", None)
    made: list[FakeComm] = []

    def create_comm(**kwargs: Any) -> FakeComm:
        made.append(FakeComm(**kwargs))
        return made[-1]

    shell = FakeShell(FakeKernel())
    bridge = labext.register(shell, create_comm=create_comm)
    try:
        assert bridge is not None and labext.bridge() is bridge
        assert shell.kernel.comm_manager.targets["scalekit"] == bridge.attach
        assert [c.kwargs for c in made] == [{"target_name": "scalekit", "primary": False}]
        assert labext.register(shell, create_comm=create_comm) is bridge  # idempotent
        assert len(made) == 1
        # a frontend opening a comm gets an answer on it
        link = FakeComm()
        shell.kernel.comm_manager.targets["scalekit"](
            link, {"content": {"data": {"action": "sync", "request_id": "hello"}}})
        assert link.replies[0]["request_id"] == "hello" and link.replies[0]["ok"]
    finally:
        bridge.stop()


def test_register_outside_a_kernel_does_nothing(monkeypatch) -> None:
    monkeypatch.setattr(labext, "_BRIDGE", None)
    assert labext.register(FakeShell()) is None
    assert labext.register(FakeShell(kernel=object())) is None  # a kernel without comms
    assert labext.bridge() is None


def test_loading_the_kernel_extension_registers_the_target(monkeypatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    import scalekit.magics as magics_module

    monkeypatch.setattr(labext, "_BRIDGE", None)
    ip = InteractiveShell.instance()
    kernel = FakeKernel()
    monkeypatch.setattr(ip, "kernel", kernel, raising=False)
    monkeypatch.setattr("comm.create_comm", lambda **kw: FakeComm(**kw))
    try:
        magics_module.load_ipython_extension(ip)
        assert "scalekit" in kernel.comm_manager.targets
    finally:
        magics_module.unload_ipython_extension(ip)
        if labext.bridge() is not None:
            labext.bridge().stop()


def test_importing_the_module_stays_cheap() -> None:
    code = textwrap.dedent("""
        import sys
        import scalekit.labext
        heavy = [m for m in ("torch", "distributed", "ipywidgets", "scalekit.session",
                             "scalekit.backends") if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_register_current_finds_the_kernel_of_this_process(monkeypatch) -> None:
    """What ``sk.cluster()`` would call: the sidebar sees API clusters without
    ``%load_ext scalekit``."""
    import IPython

    monkeypatch.setattr(labext, "_BRIDGE", None)
    monkeypatch.setattr("comm.create_comm", lambda **kw: FakeComm(**kw))
    shell = FakeShell(FakeKernel())
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    bridge = labext.register_current()
    try:
        assert bridge is not None and "scalekit" in shell.kernel.comm_manager.targets
    finally:
        if bridge is not None:
            bridge.stop()
    monkeypatch.setattr(labext, "_BRIDGE", None)
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # a script: no kernel
    assert labext.register_current() is None
    monkeypatch.delitem(sys.modules, "IPython")  # never loaded: nothing to look for
    assert labext.register_current() is None
