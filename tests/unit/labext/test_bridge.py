"""The lab bridge: snapshots from bus events, the 2 Hz throttle, the pump thread.

No kernel and no cluster: a fake comm records what would go to the frontend, a fake
session has a real :class:`EventBus` and records the intents it is given.
"""

from __future__ import annotations

import time

import pytest
from views.snapshot_events import run_events

from scalekit import labext
from scalekit.config import MIN_REFRESH_S
from scalekit.events import Notice, RankStatus, Recovered
from scalekit.labext import LabBridge

from .fakes import Clock, FakeComm, FakeSession

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


def test_the_interval_is_the_one_refresh_cap_at_least() -> None:
    assert LabBridge().interval == MIN_REFRESH_S
    assert LabBridge(interval=0.01).interval == MIN_REFRESH_S
    assert LabBridge(interval=2.0).interval == 2.0


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


def test_recovering_is_no_longer_said_once_the_run_trains_again(world) -> None:
    """The sidebar kept saying "recovering" while training ran on: the bridge folds the
    run's events into the cluster's state, so the notice stops holding."""
    bridge, (session,), broadcast, clock = world
    for event in run_events(epochs=1, max_epochs=5):
        session.bus.publish(event)
    session.bus.publish(RankStatus(run_id="run-1", rank=1, worker="w1", state="failed"))
    session.bus.publish(Notice(level="warning", message="recovering: rank 1 lost on w1; "
                               "restoring on 1 worker(s)"))
    bridge.tick()
    snap = broadcast.snapshots[-1]
    assert snap["cluster"]["view"]["status_line"]["message"].startswith("recovering")
    (run,) = snap["runs"]
    assert [a["level"] for a in run["view"]["alerts"]] == ["error", "warning"]
    session.bus.publish(Recovered(run_id="run-1", reason="rank 1 lost", epoch=1, step=0,
                                  world_size=1, downtime_s=0.152))
    clock.now += 1.0
    bridge.tick()
    snap = broadcast.snapshots[-1]
    assert snap["cluster"]["view"]["status_line"] is None
    (run,) = snap["runs"]
    assert run["view"]["alerts"] == [] and run["recoveries"] == 1
    assert "downtime 152 ms" in " ".join(run["view"]["details"])


def test_a_closed_link_is_forgotten(world) -> None:
    bridge, sessions, broadcast, clock = world
    link = FakeComm()
    bridge.attach(link)
    assert bridge.links == [link]
    link.close_callback({"content": {}})
    assert bridge.links == []


# --- the pump thread --------------- ----------------------------------------------------


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
        assert min(gaps) >= MIN_REFRESH_S - 0.05, gaps
    finally:
        bridge.stop()
