"""The JupyterLab extension's kernel side: snapshots from bus events, intents to a session.

No kernel and no cluster: a fake comm records what would go to the frontend, a fake
session has a real :class:`EventBus` and records the intents it is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from comm.base_comm import BaseComm

from scalekit import labext
from scalekit.errors import ConfigError
from scalekit.events import (
    AdaptChanged,
    BatchProgress,
    CheckpointSaved,
    ClusterSnapshot,
    EpochEnded,
    EventBus,
    Notice,
    Recovered,
    RunFinished,
    RunStarted,
    ScaleRequested,
    TrainingReport,
    WorkerStats,
)
from scalekit.labext import LabBridge, cluster_dict, run_dict
from scalekit.views.training_state import TrainingState

GIB = 2**30


class FakeComm:
    """What a frontend would receive: every ``send``; the callbacks a comm holds."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[dict[str, Any]] = []
        self.msg_callback: Any = None
        self.close_callback: Any = None
        self._lock = threading.Lock()

    def send(self, data: dict[str, Any]) -> None:
        json.dumps(data, allow_nan=False)  # what the kernel would put on the wire
        with self._lock:
            self.sent.append(data)

    def on_msg(self, callback: Any) -> None:
        self.msg_callback = callback

    def on_close(self, callback: Any) -> None:
        self.close_callback = callback

    # as the kernel's comm manager does with the frontend's messages
    def receive(self, data: dict[str, Any]) -> None:
        self.msg_callback({"content": {"comm_id": "x", "data": data}})

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.sent if m["type"] == "snapshot"]

    @property
    def replies(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "reply"]


class FakeConfig:
    backend = "local"
    max_workers = 8


class FakeSession:
    """The part of ClusterSession the bridge uses; intents publish what the real one does."""

    def __init__(self, workers: int = 2) -> None:
        self.bus = EventBus()
        self.config = FakeConfig()
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None
        self.publish_snapshot(workers)

    def publish_snapshot(self, n: int, *, cpu: float = 50.0,
                         adaptive: tuple[int, int] | None = None) -> None:
        workers = tuple(
            WorkerStats(name=f"w{i}", address=f"tcp://127.0.0.1:{4000 + i}", nthreads=1,
                        cpu=cpu, memory=GIB // 2, memory_limit=2 * GIB)
            for i in range(n)
        )
        self.bus.publish(ClusterSnapshot(
            backend="local", status="running", workers=workers, requested=n,
            adaptive=adaptive, dashboard_link="http://127.0.0.1:8787/status",
            scheduler_address="tcp://127.0.0.1:4000"))

    def _check(self) -> None:
        if self.fail is not None:
            self.bus.publish(Notice(level="error", message=str(self.fail)))
            raise self.fail

    def scale(self, n: int, *, source: str = "api") -> None:
        self.calls.append(("scale", n, source))
        self._check()
        self.bus.publish(ScaleRequested(n=n, source=source))

    def adapt(self, minimum: int | None = None, maximum: int | None = None, *,
              source: str = "api") -> None:
        self.calls.append(("adapt", minimum, maximum, source))
        self._check()
        self.bus.publish(AdaptChanged(minimum=minimum or 1, maximum=maximum or 4,
                                      source=source))

    def stop_adapt(self, *, source: str = "api") -> None:
        self.calls.append(("stop_adapt", source))
        self.bus.publish(AdaptChanged(source=source))

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True
        self.bus.publish(ClusterSnapshot(backend="local", status="closed"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_events(run_id: str = "run-1", *, epochs: int = 2, max_epochs: int = 5,
               finished: bool = False) -> list[Any]:
    events: list[Any] = [RunStarted(run_id=run_id, max_epochs=max_epochs, batch_size=64,
                                    n_samples=1024, world_size=2)]
    for epoch in range(1, epochs + 1):
        events.append(EpochEnded(run_id=run_id, epoch=epoch, world_size=2,
                                 row={"train_loss": 1.0 / epoch, "valid_loss": 2.0 / epoch,
                                      "valid_acc": 0.5, "dur": 1.5}))
        events.append(CheckpointSaved(run_id=run_id, epoch=epoch, step=0,
                                      url=f"file:///ckpt/{run_id}/epoch-{epoch}",
                                      seconds=0.1))
    if finished:
        events.append(RunFinished(run_id=run_id, status="finished", epochs=epochs))
    return events


@pytest.fixture
def world() -> tuple[LabBridge, list[FakeSession], FakeComm, Clock]:
    sessions: list[FakeSession] = [FakeSession()]
    broadcast = FakeComm()
    clock = Clock()
    bridge = LabBridge(sessions=lambda: [s for s in sessions if not s.closed],
                       broadcast=broadcast, clock=clock)
    yield bridge, sessions, broadcast, clock
    bridge.stop()


# --- pure snapshot parts -----------------------------------------------------------------


def test_cluster_dict_has_workers_totals_and_links() -> None:
    s = FakeSession(workers=3)
    snap = s.bus.latest(ClusterSnapshot)
    d = cluster_dict(snap, cluster_id="c1", max_workers=8)
    json.dumps(d, allow_nan=False)
    assert d["backend"] == "local" and d["status"] == "running"
    assert d["n_workers"] == 3 and [w["name"] for w in d["workers"]] == ["w0", "w1", "w2"]
    assert d["workers"][0] == {"name": "w0", "address": "tcp://127.0.0.1:4000", "nthreads": 1,
                               "cpu": 50.0, "memory": GIB // 2, "memory_limit": 2 * GIB,
                               "status": "running"}
    assert d["totals"] == {"threads": 3, "cpu": 50.0, "cpu_percent": 50.0,
                           "memory": 3 * GIB // 2, "memory_limit": 6 * GIB}
    assert d["dashboard_link"] == "http://127.0.0.1:8787/status"
    assert d["adaptive"] is None and d["max_workers"] == 8 and d["notice"] is None


def test_cluster_dict_caps_workers_but_totals_count_all() -> None:
    snap = FakeSession(workers=10).bus.latest(ClusterSnapshot)
    d = cluster_dict(snap, cluster_id="c1", max_shown=4)
    assert len(d["workers"]) == 4 and d["n_workers"] == 10 and d["totals"]["threads"] == 10


def test_newer_intents_override_the_last_sample() -> None:
    s = FakeSession()
    snap = s.bus.latest(ClusterSnapshot)
    on = AdaptChanged(minimum=1, maximum=6, time=snap.time + 1)
    scale = ScaleRequested(n=5, time=snap.time + 1)
    d = cluster_dict(snap, cluster_id="c1", adapt=on, scale=scale)
    assert d["adaptive"] == {"minimum": 1, "maximum": 6} and d["requested"] == 5
    old_off = AdaptChanged(time=snap.time - 1)  # older than the sample: the sample wins
    s.publish_snapshot(2, adaptive=(2, 3))
    d = cluster_dict(s.bus.latest(ClusterSnapshot), cluster_id="c1", adapt=old_off)
    assert d["adaptive"] == {"minimum": 2, "maximum": 3}


def test_run_dict_from_the_panels_training_state() -> None:
    state = TrainingState.from_events(run_events(epochs=2, max_epochs=5))
    state.apply(BatchProgress(run_id="run-1", epoch=2, batch=5, n_batches=10,
                              samples_per_s=300.0))
    state.apply(Recovered(run_id="run-1", reason="rank 1 lost", epoch=2, step=0,
                          world_size=1, lost_steps=3, downtime_s=2.5))
    d = run_dict(state)
    json.dumps(d, allow_nan=False)
    assert d["run_id"] == "run-1" and d["status"] == "running"
    assert (d["epochs_done"], d["max_epochs"]) == (2, 5)
    assert d["loss_key"] == "train_loss" and d["loss"] == pytest.approx(0.5)
    assert d["valid_loss"] == pytest.approx(1.0)
    assert d["progress"] == pytest.approx(2 / 5)  # the recovery dropped the batch progress
    assert d["last_checkpoint"]["epoch"] == 2
    assert d["last_checkpoint"]["url"] == "file:///ckpt/run-1/epoch-2"
    assert (d["recoveries"], d["lost_steps"], d["downtime_s"]) == (1, 3, 2.5)
    assert d["world_size"] == 1


def test_run_dict_progress_inside_an_epoch_and_when_finished() -> None:
    state = TrainingState.from_events(run_events(epochs=1, max_epochs=4))
    state.apply(BatchProgress(run_id="run-1", epoch=1, batch=5, n_batches=10,
                              samples_per_s=300.0))
    assert run_dict(state)["progress"] == pytest.approx(1.5 / 4)
    assert run_dict(state)["batch"] == [1, 5, 10]
    done = TrainingState.from_events(run_events(epochs=4, max_epochs=4, finished=True))
    d = run_dict(done)
    assert d["status"] == "finished" and d["progress"] == 1.0 and d["eta_s"] is None


def test_run_dict_keeps_json_strict_with_nan_losses() -> None:
    events = run_events(epochs=0)
    events.append(EpochEnded(run_id="run-1", epoch=1, world_size=2,
                             row={"train_loss": float("nan"), "dur": 1.0}))
    d = run_dict(TrainingState.from_events(events))
    json.dumps(d, allow_nan=False)
    assert d["loss"] is None


def _nvml_entry(name: str, *, gpu: bool, nvml: bool) -> dict[str, Any]:
    """A ``scheduler_info()`` worker entry as distributed builds it (the full shape and
    where each key comes from: tests/unit/backends/test_metrics.py::nvml_worker)."""
    metrics: dict[str, Any] = {"cpu": 90.0, "memory": GIB, "num_fds": 30}
    if nvml:  # SystemMonitor's flat keys, copied by Worker.get_metrics
        metrics.update({"gpu-memory-total": 80 * GIB, "gpu_utilization": 61,
                        "gpu_memory_used": 20 * GIB})
    return {"type": "Worker", "id": name, "name": name, "host": "127.0.0.1", "nthreads": 4,
            "resources": {"GPU": 1} if gpu else {}, "memory_limit": 8 * GIB,
            "status": "running", "metrics": metrics}


def test_gpu_workers_in_the_payload_from_scheduler_info() -> None:
    from scalekit.backends.metrics import snapshot_from_info

    info = {"address": "tcp://127.0.0.1:8786", "workers": {
        "tcp://127.0.0.1:4000": _nvml_entry("g0", gpu=True, nvml=True),
        "tcp://127.0.0.1:4001": _nvml_entry("g1", gpu=True, nvml=False),  # no pynvml
        "tcp://127.0.0.1:4002": _nvml_entry("c0", gpu=False, nvml=False),
    }}
    d = cluster_dict(snapshot_from_info(info, backend="local"), cluster_id="c1")
    json.dumps(d, allow_nan=False)
    c0, g0, g1 = d["workers"]
    assert g0["gpu"] == {"name": "", "resource": 1.0, "monitored": True, "utilization": 61.0,
                         "memory": 20 * GIB, "memory_total": 80 * GIB}
    assert g1["gpu"] == {"name": "", "resource": 1.0, "monitored": False,
                         "utilization": None, "memory": None, "memory_total": None}
    assert "gpu" not in c0  # CPU workers are sent as before
    assert d["totals"]["gpu"] == {"workers": 2, "monitored": True, "utilization": 61.0,
                                  "memory": 20 * GIB, "memory_total": 80 * GIB}


def test_cpu_only_payload_has_no_gpu_keys_and_gpu_totals_count_every_worker() -> None:
    cpu = cluster_dict(FakeSession(workers=2).bus.latest(ClusterSnapshot), cluster_id="c1")
    assert "gpu" not in cpu["totals"] and all("gpu" not in w for w in cpu["workers"])
    workers = tuple(WorkerStats(name=f"w{i}", address=f"tcp://h:{i}", nthreads=1, gpus=1.0,
                                gpu_utilization=10.0 * i) for i in range(10))
    snap = ClusterSnapshot(backend="local", status="running", workers=workers)
    d = cluster_dict(snap, cluster_id="c1", max_shown=4)
    assert len(d["workers"]) == 4 and d["totals"]["gpu"]["workers"] == 10
    assert d["totals"]["gpu"]["utilization"] == pytest.approx(45.0)


def test_run_dict_has_the_reports_peak_gpu_memory() -> None:
    state = TrainingState.from_events(run_events(epochs=2, max_epochs=2))
    assert run_dict(state)["peak_gpu_memory"] == []
    state.apply(TrainingReport(run_id="run-1", strategy="ddp", world_size=2,
                               samples_per_s=1.0, peak_gpu_memory=(2**30, 2 * 2**30)))
    assert run_dict(state)["peak_gpu_memory"] == [2**30, 2 * 2**30]


# --- the bridge: snapshots ---------------------------------------------------------------


def test_first_tick_sends_the_replayed_cluster(world) -> None:
    bridge, sessions, broadcast, clock = world
    assert bridge.tick() is True
    [snap] = broadcast.snapshots
    assert snap["protocol"] == labext.PROTOCOL and snap["seq"] == 1
    assert snap["cluster"]["n_workers"] == 2 and snap["clusters"] == 1
    assert snap["runs"] == []
    # nbclient keeps any comm message with a "state" key as widget state
    assert "state" not in snap and "buffer_paths" not in snap


def test_at_most_two_snapshots_a_second(world) -> None:
    bridge, (session,), broadcast, clock = world
    bridge.tick()
    for i in range(20):  # a burst of samples within one interval
        session.publish_snapshot(2, cpu=float(i))
        bridge.tick()
    assert len(broadcast.snapshots) == 1
    clock.now += 0.49
    assert bridge.tick() is False
    clock.now += 0.01
    assert bridge.tick() is True
    assert broadcast.snapshots[-1]["cluster"]["totals"]["cpu"] == 19.0  # the latest
    assert [s["seq"] for s in broadcast.snapshots] == [1, 2]
    assert bridge.next_wait() == pytest.approx(0.5)


def test_nothing_new_nothing_sent_but_a_slow_heartbeat(world) -> None:
    bridge, sessions, broadcast, clock = world
    bridge.tick()
    clock.now += 2.0
    assert bridge.tick() is False
    clock.now += labext.HEARTBEAT
    assert bridge.tick() is True
    assert len(broadcast.snapshots) == 2


def test_no_session_and_no_run_sends_one_empty_snapshot_then_nothing() -> None:
    broadcast = FakeComm()
    clock = Clock()
    bridge = LabBridge(sessions=list, broadcast=broadcast, clock=clock)
    assert bridge.tick() is True
    assert broadcast.snapshots[0]["cluster"] is None and broadcast.snapshots[0]["runs"] == []
    clock.now += 60
    assert bridge.tick() is False  # no heartbeat for an empty kernel


def test_training_events_on_the_bus_become_runs(world) -> None:
    bridge, (session,), broadcast, clock = world
    bridge.tick()
    for event in run_events("old", epochs=3, max_epochs=3, finished=True):
        session.bus.publish(event)
    for event in run_events("new", epochs=1, max_epochs=10):
        session.bus.publish(event)
    clock.now += 1
    bridge.tick()
    runs = broadcast.snapshots[-1]["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [("old", "finished"),
                                                           ("new", "running")]
    assert runs[1]["epochs_done"] == 1 and runs[1]["max_epochs"] == 10
    assert runs[1]["loss"] == pytest.approx(1.0)
    assert runs[0]["last_checkpoint"]["epoch"] == 3


def test_only_the_last_runs_are_kept_but_running_ones_stay() -> None:
    session = FakeSession()
    bridge = LabBridge(sessions=lambda: [session], broadcast=FakeComm(), max_runs=3)
    bridge.refresh()
    for event in run_events("running", epochs=1):
        session.bus.publish(event)
    for i in range(5):
        for event in run_events(f"done-{i}", epochs=1, max_epochs=1, finished=True):
            session.bus.publish(event)
    ids = [r["run_id"] for r in bridge.snapshot()["runs"]]
    assert ids == ["running", "done-3", "done-4"]


def test_a_closed_cluster_disappears_and_its_runs_stay(world) -> None:
    bridge, (session,), broadcast, clock = world
    for event in run_events(epochs=2, max_epochs=2, finished=True):
        session.bus.publish(event)
    bridge.tick()
    session.close()
    clock.now += 1
    bridge.tick()
    last = broadcast.snapshots[-1]
    assert last["cluster"] is None and last["clusters"] == 0
    assert [r["run_id"] for r in last["runs"]] == ["run-1"]


def test_the_newest_session_is_the_cluster_shown(world) -> None:
    bridge, sessions, broadcast, clock = world
    bridge.tick()
    sessions.append(FakeSession(workers=5))
    clock.now += 1
    bridge.tick()
    snap = broadcast.snapshots[-1]
    assert snap["clusters"] == 2 and snap["cluster"]["n_workers"] == 5


def test_notices_reach_the_snapshot(world) -> None:
    bridge, (session,), broadcast, clock = world
    session.bus.publish(Notice(level="error", message="workers: got 99, expected 1..8"))
    bridge.tick()
    assert broadcast.snapshots[-1]["cluster"]["notice"]["level"] == "error"


# --- the bridge: intents -----------------------------------------------------------------


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


class KernelSideComm(BaseComm):
    """The kernel's comm class as ipykernel's: ``publish_msg`` would go out on IOPub;
    here it records ``(msg_type, data)``."""

    def __init__(self, **kwargs: Any) -> None:
        self.published: list[tuple[str, Any]] = []
        super().__init__(**kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        json.dumps(data, allow_nan=False)  # what the kernel would put on the wire
        self.published.append((msg_type, data))

    @property
    def replies(self) -> list[dict[str, Any]]:
        return [d for t, d in self.published if t == "comm_msg" and d.get("type") == "reply"]


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


def test_a_closed_link_is_forgotten(world) -> None:
    bridge, sessions, broadcast, clock = world
    link = FakeComm()
    bridge.attach(link)
    assert bridge.links == [link]
    link.close_callback({"content": {}})
    assert bridge.links == []


# --- the pump thread and registration ----------------------------------------------------


def test_the_pump_thread_sends_at_most_twice_a_second() -> None:
    session = FakeSession()
    broadcast = FakeComm()
    bridge = LabBridge(sessions=lambda: [session], broadcast=broadcast).start()
    try:
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            session.publish_snapshot(2, cpu=10.0)
            time.sleep(0.01)
        sent = broadcast.snapshots
        times = [s["time"] for s in sent]
        assert 2 <= len(sent) <= 5, len(sent)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= labext.MIN_INTERVAL - 0.05, gaps
    finally:
        bridge.stop()


class FakeManager:
    def __init__(self) -> None:
        self.targets: dict[str, Any] = {}

    def register_target(self, name: str, callback: Any) -> None:
        self.targets[name] = callback


class FakeKernel:
    def __init__(self) -> None:
        self.comm_manager = FakeManager()


class FakeShell:
    def __init__(self, kernel: Any = None) -> None:
        if kernel is not None:
            self.kernel = kernel


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
