"""Intents from the sidebar: carried out on the session, every message answered."""

from __future__ import annotations

from typing import Any

import pytest

from scalekit import labext
from scalekit.errors import ConfigError
from scalekit.labext import LabBridge

from .fakes import FakeComm, FakeKernel, FakeSession, FakeShell, KernelSideComm


def test_intents_call_the_sessions_methods_with_source_sidebar(world) -> None:
    bridge, (session,), broadcast, clock = world
    link = FakeComm()
    bridge.attach(link, {"content": {"data": {"action": "sync", "request_id": 1}}})
    link.receive({"action": "scale", "n": 4, "request_id": 2})
    link.receive({"action": "adapt", "minimum": 1, "maximum": 6, "request_id": 3})
    link.receive({"action": "adapt", "request_id": 4})  # configured bounds
    link.receive({"action": "stop_adapt", "request_id": 5})
    assert session.calls == [("scale", 4, "sidebar"), ("adapt", 1, 6, "sidebar"),
                             ("adapt", None, None, "sidebar"), ("stop_adapt", "sidebar")]
    assert [(r["request_id"], r["ok"]) for r in link.replies] == [
        (1, True), (2, True), (3, True), (4, True), (5, True)]
    assert link.replies[1]["message"] == "scaling to 4 workers"
    assert link.snapshots == []  # snapshots go on the broadcast comm only
    bridge.tick()
    cluster = broadcast.snapshots[-1]["cluster"]
    assert cluster["requested"] == 4 and cluster["adaptive"] is None


def test_close_from_the_sidebar_closes_the_session(world) -> None:
    bridge, (session,), broadcast, clock = world
    link = FakeComm()
    bridge.attach(link)
    bridge.tick()
    link.receive({"action": "close"})
    assert session.calls == [("close",)] and session.closed
    assert link.replies[-1]["ok"] is True
    clock.now += 1
    bridge.tick()
    assert broadcast.snapshots[-1]["cluster"] is None


@pytest.mark.parametrize("data, fragment", [
    ({"action": "scale", "n": "3"}, "expected a whole number"),
    ({"action": "scale", "n": 2.5}, "expected a whole number"),
    ({"action": "scale", "n": True}, "expected a whole number"),
    ({"action": "scale"}, "expected a whole number"),
    ({"action": "adapt", "minimum": "a", "maximum": 3}, "minimum: expected"),
    ({"action": "explode"}, "unknown action 'explode'"),
    ({}, "unknown action None"),
])
def test_bad_intents_are_answered_not_raised(world, data, fragment) -> None:
    bridge, (session,), broadcast, clock = world
    link = FakeComm()
    bridge.attach(link)
    link.receive(data)
    [reply] = link.replies
    assert reply["ok"] is False and fragment in reply["message"]
    assert session.calls == []


MALFORMED = [
    # (the message as the comm hands it to the bridge, words of the reply's message)
    ({"content": {"comm_id": "x", "data": "scale"}}, "data must be an object"),
    ({"content": {"comm_id": "x", "data": ["scale", 3]}}, "got list ['scale', 3]"),
    ({"content": {"comm_id": "x", "data": 3}}, "got int 3"),
    ({"content": {"comm_id": "x", "data": True}}, "got bool True"),
    ({"content": "scale"}, "content must be an object"),
    ({"content": ["x"]}, "content must be an object"),
    ({}, "content must be an object"),
    ("scale", "expected a message object, got str 'scale'"),
    (None, "expected a message object"),
]


@pytest.mark.parametrize("msg, fragment", MALFORMED)
def test_a_message_that_is_no_intent_is_answered_not_raised(world, msg, fragment) -> None:
    bridge, (session,), broadcast, clock = world
    link = FakeComm()
    bridge.attach(link)
    link.msg_callback(msg)  # what the comm calls with whatever arrived
    [reply] = link.replies
    assert reply["ok"] is False and fragment in reply["message"], reply
    assert reply["request_id"] is None and reply["action"] is None
    assert session.calls == []
    link.receive({"action": "scale", "n": 3, "request_id": 9})  # the link still works
    assert link.replies[-1]["ok"] is True and session.calls == [("scale", 3, "sidebar")]


def test_real_comm_messages_whose_data_is_no_object_are_answered(monkeypatch) -> None:
    """Frontend messages as a kernel receives them: serialised on the wire by a
    ``jupyter_client`` session, deserialised, routed by the comm manager to the target."""
    from comm.base_comm import CommManager
    from jupyter_client.session import Session

    manager = CommManager()
    made: list[KernelSideComm] = []

    def create_comm(**kwargs: Any) -> KernelSideComm:
        made.append(KernelSideComm(**kwargs))
        return made[-1]

    session = FakeSession()
    # register() adopts a bridge made before it (here: one that sees the fake session)
    monkeypatch.setattr(labext, "_BRIDGE", LabBridge(sessions=lambda: [session]))
    monkeypatch.setattr("comm.create_comm", create_comm)
    monkeypatch.setattr("comm.get_comm_manager", lambda: manager)
    wire = Session(key=b"secret")

    def deliver(handler: Any, msg_type: str, content: dict[str, Any]) -> None:
        frames = wire.serialize(wire.msg(msg_type, content=content))
        _, frames = wire.feed_identities(frames)
        handler(None, [], wire.deserialize(frames))

    bridge = labext.register(FakeShell(FakeKernel()), manager=manager,
                             create_comm=create_comm)
    assert bridge is not None
    try:
        # an open whose data is a string: answered on the new comm, which stays open
        deliver(manager.comm_open, "comm_open",
                {"comm_id": "c1", "target_name": "scalekit", "data": "sync"})
        link = manager.comms["c1"]
        assert link.replies[-1]["ok"] is False
        assert "data must be an object" in link.replies[-1]["message"]
        for data in ("scale", ["scale", 2], 2, None):
            deliver(manager.comm_msg, "comm_msg", {"comm_id": "c1", "data": data})
        oks = [(r["ok"], r["message"]) for r in link.replies[1:]]
        assert [ok for ok, _ in oks] == [False] * 4
        assert "got str 'scale'" in oks[0][1] and "got list" in oks[1][1]
        assert "got int 2" in oks[2][1] and "unknown action None" in oks[3][1]
        deliver(manager.comm_msg, "comm_msg",
                {"comm_id": "c1", "data": {"action": "scale", "n": 2, "request_id": "r"}})
        assert link.replies[-1] == {**link.replies[-1], "ok": True, "request_id": "r"}
        assert session.calls == [("scale", 2, "sidebar")]
        assert "c1" in manager.comms  # never closed for a bad message
    finally:
        bridge.stop()


def test_a_value_the_session_rejects_comes_back_as_its_message(world) -> None:
    bridge, (session,), broadcast, clock = world
    session.fail = ConfigError("cluster.workers", 99, "an integer in 1..8")
    link = FakeComm()
    bridge.attach(link)
    link.receive({"action": "scale", "n": 99, "request_id": "r"})
    reply = link.replies[-1]
    assert reply["ok"] is False and "cluster.workers: got 99" in reply["message"]
    bridge.tick()  # and the session's own error notice is in the next snapshot
    assert "got 99" in broadcast.snapshots[-1]["cluster"]["notice"]["message"]


def test_an_unexpected_failure_is_answered_too(world) -> None:
    bridge, (session,), broadcast, clock = world
    session.fail = RuntimeError("scheduler gone")
    link = FakeComm()
    bridge.attach(link)
    link.receive({"action": "scale", "n": 3})
    assert link.replies[-1] == {**link.replies[-1], "ok": False, "message": "scheduler gone"}


def test_intents_without_a_cluster_or_for_another_cluster() -> None:
    link = FakeComm()
    bridge = LabBridge(sessions=list, broadcast=FakeComm())
    bridge.attach(link)
    link.receive({"action": "scale", "n": 2})
    assert link.replies[-1]["ok"] is False
    assert "no cluster is running" in link.replies[-1]["message"]
    session = FakeSession()
    bridge = LabBridge(sessions=lambda: [session], broadcast=FakeComm())
    bridge.attach(link)
    link.receive({"action": "scale", "n": 2, "cluster": "c-gone"})
    assert "no longer running" in link.replies[-1]["message"] and session.calls == []
    cluster_id = bridge.snapshot()["cluster"]["id"]
    link.receive({"action": "scale", "n": 3, "cluster": cluster_id})
    assert session.calls == [("scale", 3, "sidebar")]
