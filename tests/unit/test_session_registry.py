"""The one session registry: which cluster is current, for the magic, the sidebar and fit.

No cluster: sessions are stand-ins, or real :class:`ClusterSession` objects on a backend
that runs nothing. Each test gets an empty registry.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import scalekit.magics as magics_module
import scalekit.session as session_module
import scalekit.session_registry as registry
from scalekit.errors import UsageError
from scalekit.events import ClusterSnapshot, EventBus
from scalekit.fitting import _session_for
from scalekit.labext import LabBridge


class Stub:
    """What the registry needs of a session: ``closed`` and ``close()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.closes = 0
        self.bus = EventBus()
        self.bus.publish(ClusterSnapshot(backend="local", status="running", requested=1))
        self.scaled: list[int] = []

    def close(self) -> None:
        self.closes += 1
        self.closed = True
        self.bus.publish(ClusterSnapshot(backend="local", status="closed"))

    def scale(self, n: int, **kw: Any) -> None:
        self.scaled.append(n)

    def __repr__(self) -> str:
        return f"<Stub {self.name}>"


@pytest.fixture(autouse=True)
def empty(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_SESSIONS", [])


def test_the_newest_open_session_is_current() -> None:
    assert registry.current_session() is None and registry.active_sessions() == []
    a, b = Stub("a"), Stub("b")
    registry.register(a)
    registry.register(b, started_by=registry.MAGIC)
    assert registry.active_sessions() == [a, b] and registry.current_session() is b
    b.closed = True  # closed behind the registry's back (a dead cluster)
    assert registry.current_session() is a and registry.active_sessions() == [a]


def test_registering_again_only_records_who_started_it() -> None:
    a, b = Stub("a"), Stub("b")
    registry.register(a)  # sk.cluster(): ClusterSession.start registers it
    registry.register(b)
    registry.register(a, started_by=registry.MAGIC)  # %scalekit up says it was the magic
    assert registry.active_sessions() == [a, b]  # its place (and b's currency) unchanged
    assert registry.active_sessions(started_by=registry.MAGIC) == [a]
    assert registry.active_sessions(started_by=registry.API) == [b]


def test_close_all_closes_each_once_and_by_who_started_it() -> None:
    api, magic = Stub("api"), Stub("magic")
    registry.register(api)
    registry.register(magic, started_by=registry.MAGIC)
    assert registry.close_all(started_by=registry.MAGIC) == 1
    assert magic.closed and not api.closed and registry.active_sessions() == [api]
    assert registry.close_all() == 1 and api.closed
    assert registry.close_all() == 0  # an atexit hook after the kernel-shutdown hook
    assert (api.closes, magic.closes) == (1, 1)


def test_close_all_leaves_the_registry_before_closing() -> None:
    release = threading.Event()

    class Slow(Stub):
        def close(self) -> None:
            release.wait(10)
            super().close()

    slow = Slow("slow")
    registry.register(slow)
    closing = threading.Thread(target=registry.close_all)
    closing.start()
    try:
        for _ in range(100):
            if not registry._SESSIONS:
                break
            threading.Event().wait(0.01)
        assert registry.close_all() == 0  # a second caller does not close it again
    finally:
        release.set()
        closing.join(5)
    assert slow.closes == 1


def test_a_failing_close_does_not_stop_the_others(caplog) -> None:
    class Broken(Stub):
        def close(self) -> None:
            raise RuntimeError("scheduler gone")

    broken, fine = Broken("broken"), Stub("fine")
    registry.register(broken)
    registry.register(fine)
    assert registry.close_all() == 2
    assert fine.closed and "closing <Stub broken> failed" in caplog.text


class NoBackend:
    """A backend that runs nothing."""

    name = "local"

    def __init__(self, config: Any) -> None:
        self.config, self.closed, self.adaptive = config, False, None

    def start(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def scale(self, n: int) -> None: ...

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(backend="local", status="closed" if self.closed else "running")


def test_a_real_session_registers_at_start_and_leaves_at_close(monkeypatch) -> None:
    monkeypatch.setattr(session_module, "make_backend", lambda config, *a, **k: NoBackend(config))
    session = session_module.cluster(workers=1)
    try:
        assert registry.current_session() is session
        assert registry.active_sessions(started_by=registry.API) == [session]
    finally:
        session.close()
    assert registry._SESSIONS == [] and registry.current_session() is None


def test_one_answer_for_the_magic_the_sidebar_and_fit() -> None:
    """issue 14: each of them used to decide on its own which cluster is current."""
    older, newer = Stub("older"), Stub("newer")
    registry.register(older, started_by=registry.MAGIC)
    registry.register(newer)  # e.g. sk.cluster() in a later cell
    shell = InteractiveShell.instance()
    magic = magics_module.load_ipython_extension(shell, display=lambda obj: None)
    bridge = LabBridge()  # reads the registry, as the one %load_ext starts
    try:
        bridge.refresh()
        shown = bridge.snapshot()["cluster"]["id"]
        assert magic.session is newer and _session_for(None) is newer
        bridge.handle(None, {"content": {"data": {"action": "scale", "n": 3}}})
        assert newer.scaled == [3] and older.scaled == []
        newer.close()
        bridge.refresh()
        assert bridge.snapshot()["cluster"]["id"] != shown
        assert magic.session is older and _session_for(None) is older
        bridge.handle(None, {"content": {"data": {"action": "scale", "n": 2}}})
        assert older.scaled == [2]
    finally:
        bridge.stop()
        magics_module.unload_ipython_extension(shell)
    assert older.closed  # the magic started it: unloading closes it
    with pytest.raises(UsageError, match="no cluster to train on"):
        _session_for(None)
