"""The cluster's runs in the sidebar: other kernels', the command line's and detached
fits, followed through the cluster's run registry (a fake one here, answering as the
scheduler plugin does)."""

from __future__ import annotations

from typing import Any

from views.snapshot_events import run_events

from scalekit.labext import LabBridge
from scalekit.labext.cluster_runs import POLL_S, ClusterRuns

from .fakes import Clock, FakeComm, FakeSession


class FakeRegistry:
    """``scalekit_runs_list`` and ``scalekit_runs_events`` as the plugin answers them."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[dict[str, Any]]] = {}
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    def add(self, run_id: str, events: list[Any], *, owner: str = "ada@lab",
            detached: bool = True, state: str = "running", started: float = 0.0) -> None:
        self.records[run_id] = {"run_id": run_id, "owner": owner, "net": "NeuralNetClassifier",
                                "strategy": "ddp", "detached": detached, "state": state,
                                "started": started}
        self.logs.setdefault(run_id, []).extend(e.to_dict() for e in events)

    def __call__(self, op: str, **kwargs: Any) -> Any:
        self.asked.append((op, kwargs))
        if self.down:
            return None
        if op == "scalekit_runs_list":  # a tuple, as it arrives through Dask's comms
            return tuple(dict(r) for r in self.records.values())
        if op == "scalekit_runs_events":
            log = self.logs.get(kwargs["run_id"], [])
            return {"run": self.records.get(kwargs["run_id"]), "next": len(log),
                    "events": tuple(log[kwargs.get("since", 0):])}
        raise AssertionError(op)


def test_other_runs_are_followed_and_the_kernels_own_are_not() -> None:
    registry, clock = FakeRegistry(), Clock()
    registry.add("theirs", run_events("theirs", epochs=2, max_epochs=5))
    registry.add("mine", run_events("mine", epochs=1), detached=False)
    runs = ClusterRuns(registry, clock=clock)
    assert runs.poll(own={"mine"}) is True
    [theirs] = runs.runs()
    assert theirs["run_id"] == "theirs" and theirs["status"] == "running"
    assert theirs["epochs_done"] == 2 and theirs["max_epochs"] == 5
    assert theirs["owner"] == "ada@lab" and theirs["detached"] is True
    assert theirs["attach"] == 'sk.attach("theirs")'
    assert theirs["view"]["details"][0] == "NeuralNetClassifier · detached · by ada@lab"
    assert theirs["view"]["details"][-1] == 'follow it: sk.attach("theirs")'
    assert not any(kw.get("run_id") == "mine" for _, kw in registry.asked)


def test_news_is_fetched_from_a_cursor_at_most_every_poll_interval() -> None:
    registry, clock = FakeRegistry(), Clock()
    events = run_events("theirs", epochs=3, max_epochs=3, finished=True)
    registry.add("theirs", events[:3])
    runs = ClusterRuns(registry, clock=clock)
    assert runs.poll() is True
    asked = len(registry.asked)
    registry.logs["theirs"].extend(e.to_dict() for e in events[3:])
    assert runs.poll() is False and len(registry.asked) == asked  # not due yet
    clock.now += POLL_S
    assert runs.poll() is True
    assert registry.asked[-1] == ("scalekit_runs_events", {"run_id": "theirs", "since": 3})
    registry.records["theirs"]["state"] = "finished"
    clock.now += POLL_S
    runs.poll()
    [done] = runs.runs()
    assert done["status"] == "finished" and done["epochs_done"] == 3
    asked = len(registry.asked)
    clock.now += POLL_S
    assert runs.poll() is False
    assert [op for op, _ in registry.asked[asked:]] == ["scalekit_runs_list"]  # over


def test_a_cluster_that_does_not_answer_leaves_the_list_as_it_was() -> None:
    registry, clock = FakeRegistry(), Clock()
    registry.add("theirs", run_events("theirs"))
    runs = ClusterRuns(registry, clock=clock)
    runs.poll()
    registry.down = True
    clock.now += POLL_S
    assert runs.poll() is False
    assert [r["run_id"] for r in runs.runs()] == ["theirs"]


def test_running_runs_and_then_the_newest_are_kept() -> None:
    registry, clock = FakeRegistry(), Clock()
    for i in range(5):
        registry.add(f"old{i}", [], state="finished", started=float(i))
    registry.add("long", run_events("long"), state="running", started=-100.0)
    runs = ClusterRuns(registry, clock=clock, max_runs=3)
    runs.poll()
    assert [r["run_id"] for r in runs.runs()] == ["long", "old3", "old4"]


class SessionWithRegistry(FakeSession):
    def __init__(self, registry: FakeRegistry) -> None:
        super().__init__()
        self.ask_registry = registry


def test_the_snapshot_lists_the_clusters_other_runs() -> None:
    registry, clock, broadcast = FakeRegistry(), Clock(), FakeComm()
    session = SessionWithRegistry(registry)
    for event in run_events("mine", epochs=1):  # this kernel's fit, on its bus
        session.bus.publish(event)
    registry.add("mine", run_events("mine", epochs=1), detached=False, owner="me@here")
    registry.add("theirs", run_events("theirs", epochs=1))
    bridge = LabBridge(sessions=lambda: [session], broadcast=broadcast, clock=clock)
    try:
        assert bridge.tick() is True
        snap = broadcast.snapshots[-1]
        assert [r["run_id"] for r in snap["runs"]] == ["mine"]
        assert [r["run_id"] for r in snap["cluster_runs"]] == ["theirs"]
        # their next epoch: a new snapshot once the next poll brings it
        registry.logs["theirs"].extend(e.to_dict() for e in run_events("theirs", epochs=2)[-2:])
        clock.now += POLL_S
        assert bridge.tick() is True
        assert broadcast.snapshots[-1]["cluster_runs"][0]["epochs_done"] == 2
        # a session without a registry (or a closed cluster) shows none
        session.closed = True
        clock.now += POLL_S
        bridge.tick()
        assert broadcast.snapshots[-1]["cluster_runs"] == []
    finally:
        bridge.stop()
