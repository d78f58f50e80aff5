"""The event bus: replay to late subscribers, delivery order, isolation of failing
subscribers, and events that serialise to JSON."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading

import pytest

from scalekit.events import (
    AdaptChanged,
    ClusterSnapshot,
    Event,
    EventBus,
    Notice,
    ScaleRequested,
    TrainingReport,
    WorkerStats,
)


def worker(i: int, **kw) -> WorkerStats:
    return WorkerStats(name=f"w{i}", address=f"tcp://127.0.0.1:{4000 + i}", nthreads=2, **kw)


def snapshot(n: int, **kw) -> ClusterSnapshot:
    return ClusterSnapshot(
        backend="local", status="running", workers=tuple(worker(i) for i in range(n)), **kw
    )


# -- replay -------------------------------------------------------------------------------


def test_late_subscriber_gets_the_latest_event_of_each_kind():
    bus = EventBus()
    bus.publish(snapshot(1, time=1.0))
    bus.publish(Notice(level="info", message="first", time=2.0))
    bus.publish(snapshot(3, time=3.0))  # replaces the first snapshot

    seen: list[Event] = []
    bus.subscribe(seen.append)

    assert [type(e) for e in seen] == [Notice, ClusterSnapshot]  # oldest first
    assert seen[1].n_workers == 3
    assert bus.latest(ClusterSnapshot) is seen[1]
    assert bus.latest(Notice).message == "first"
    assert bus.latest(ScaleRequested) is None


def test_replay_can_be_turned_off():
    bus = EventBus()
    bus.publish(Notice(level="info", message="old"))
    seen: list[Event] = []
    bus.subscribe(seen.append, replay=False)
    assert seen == []
    bus.publish(Notice(level="info", message="new"))
    assert [e.message for e in seen] == ["new"]


def test_unsubscribe_stops_delivery_and_is_idempotent():
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    bus.publish(ScaleRequested(n=2))
    unsubscribe()
    unsubscribe()
    bus.publish(ScaleRequested(n=3))
    assert [e.n for e in seen] == [2]


# -- ordering -----------------------------------------------------------------------------


def test_each_subscriber_sees_publish_order():
    bus = EventBus()
    a: list[int] = []
    b: list[int] = []
    bus.subscribe(lambda e: a.append(e.n))
    bus.subscribe(lambda e: b.append(e.n))
    for n in range(1, 50):
        bus.publish(ScaleRequested(n=n))
    assert a == b == list(range(1, 50))


def test_concurrent_publishers_are_delivered_one_at_a_time_in_the_same_order():
    bus = EventBus()
    a: list[tuple[str, int]] = []
    b: list[tuple[str, int]] = []
    inside = threading.Event()
    overlaps: list[bool] = []

    def first(e: ScaleRequested) -> None:
        overlaps.append(inside.is_set())
        inside.set()
        a.append((e.source, e.n))
        inside.clear()

    bus.subscribe(first)
    bus.subscribe(lambda e: b.append((e.source, e.n)))

    def publish_many(source: str) -> None:
        for n in range(200):
            bus.publish(ScaleRequested(n=n, source=source))

    threads = [threading.Thread(target=publish_many, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert a == b  # both subscribers saw one global order
    assert len(a) == 800
    assert not any(overlaps)  # a callback never ran concurrently with itself
    for source in ("t0", "t1", "t2", "t3"):  # each publisher's own order is kept
        assert [n for s, n in a if s == source] == list(range(200))


def test_subscriber_may_publish_from_its_callback():
    bus = EventBus()
    seen: list[str] = []

    def echo(e: Event) -> None:
        seen.append(type(e).__name__)
        if isinstance(e, ScaleRequested):
            bus.publish(Notice(level="info", message=f"scaling to {e.n}"))

    bus.subscribe(echo)
    bus.publish(ScaleRequested(n=2))
    assert seen == ["ScaleRequested", "Notice"]
    assert bus.latest(Notice).message == "scaling to 2"


# -- failing subscribers ---------------------------------------------------------------------


def test_failing_subscriber_is_logged_and_isolated(caplog):
    bus = EventBus()
    before: list[Event] = []
    after: list[Event] = []

    def broken(e: Event) -> None:
        raise RuntimeError("view exploded")

    bus.subscribe(before.append)
    bus.subscribe(broken)
    bus.subscribe(after.append)

    with caplog.at_level(logging.ERROR, logger="scalekit.events"):
        bus.publish(ScaleRequested(n=2))  # does not raise
        bus.publish(ScaleRequested(n=3))

    assert [e.n for e in before] == [2, 3]
    assert [e.n for e in after] == [2, 3]
    failures = [r for r in caplog.records if r.name == "scalekit.events"]
    assert len(failures) == 2
    assert "ScaleRequested" in failures[0].getMessage()
    assert failures[0].exc_info[0] is RuntimeError


def test_failing_subscriber_during_replay_does_not_break_subscribe(caplog):
    bus = EventBus()
    bus.publish(Notice(level="info", message="hello"))

    def broken(e: Event) -> None:
        raise ValueError("bad")

    with caplog.at_level(logging.ERROR, logger="scalekit.events"):
        unsubscribe = bus.subscribe(broken)
    assert callable(unsubscribe)
    assert any(r.name == "scalekit.events" for r in caplog.records)


# -- event objects ---------------------------------------------------------------------------

EVENTS = [
    worker(0, cpu=12.5, memory=1024, memory_limit=4096),
    snapshot(
        2,
        requested=2,
        adaptive=(1, 4),
        dashboard_link="http://127.0.0.1:8787/status",
        scheduler_address="tcp://127.0.0.1:8786",
        details=(("pods", "2 running"),),
    ),
    ClusterSnapshot(backend="local", status="closed"),
    ScaleRequested(n=3, source="slider"),
    AdaptChanged(minimum=1, maximum=4),
    AdaptChanged(),
    Notice(level="error", message="scale: got 0"),
    worker(1, gpus=1.0, gpu_name="NVIDIA H200", gpu_utilization=37.0, gpu_memory=2**30,
           gpu_memory_total=140 * 2**30),
    TrainingReport(run_id="r", strategy="ddp", world_size=2, samples_per_s=1.0,
                   peak_rss=(1, 2), peak_gpu_memory=(3 * 2**30, 2**30)),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_to_dict_is_json_serialisable(event):
    data = event.to_dict()
    text = json.dumps(data)
    back = json.loads(text)
    assert back["type"] == type(event).__name__
    assert back["time"] == event.time
    names = {f.name for f in dataclasses.fields(event)}
    assert set(back) == names | {"type"}


def test_snapshot_to_dict_nests_workers():
    data = json.loads(json.dumps(EVENTS[1].to_dict()))
    assert [w["name"] for w in data["workers"]] == ["w0", "w1"]
    assert data["adaptive"] == [1, 4]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_are_frozen(event):
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.time = 0.0  # type: ignore[misc]


def test_snapshot_totals():
    snap = ClusterSnapshot(
        backend="local",
        status="running",
        workers=(worker(0, cpu=10.0, memory=100, memory_limit=1000),
                 worker(1, cpu=30.0, memory=300, memory_limit=1000)),
    )
    assert snap.n_workers == 2
    assert snap.total_threads == 4
    assert snap.total_memory == 400
    assert snap.total_memory_limit == 2000
    assert snap.mean_cpu == 20.0
    assert ClusterSnapshot(backend="local", status="closed").mean_cpu == 0.0


def test_adapt_changed_enabled():
    assert AdaptChanged(minimum=1, maximum=4).enabled
    assert not AdaptChanged().enabled


# -- GPUs ------------------------------------------------------------------------------------


def test_worker_defaults_mean_no_gpu():
    w = worker(0, cpu=10.0)
    assert (w.gpus, w.gpu_name, w.gpu_utilization, w.gpu_memory, w.gpu_memory_total) == (
        0.0, "", None, None, None)
    assert not w.has_gpu and not w.gpu_monitored
    assert snapshot(2).gpu_workers == ()
    assert snapshot(2).mean_gpu_utilization is None and snapshot(2).total_gpu_memory is None


@pytest.mark.parametrize("fields, monitored", [
    ({"gpus": 1.0}, False),  # the resource alone: a GPU worker without NVML numbers
    ({"gpu_memory_total": 2**30}, True),  # NVML sees a device, no resource (unpinned)
    ({"gpus": 1.0, "gpu_utilization": 0.0}, True),  # 0 % is a measurement, not "none"
])
def test_a_gpu_worker_is_one_by_resource_or_by_nvml(fields, monitored):
    w = worker(0, **fields)
    assert w.has_gpu and w.gpu_monitored is monitored


def test_snapshot_gpu_totals_cover_the_workers_that_measured():
    snap = ClusterSnapshot(backend="local", status="running", workers=(
        worker(0, gpus=1.0, gpu_utilization=20.0, gpu_memory=100, gpu_memory_total=1000),
        worker(1, gpus=1.0, gpu_utilization=60.0, gpu_memory=300, gpu_memory_total=1000),
        worker(2, gpus=1.0),  # no nvidia-ml-py there
        worker(3),
    ))
    assert [w.name for w in snap.gpu_workers] == ["w0", "w1", "w2"]
    assert snap.mean_gpu_utilization == 40.0
    assert snap.total_gpu_memory == (400, 2000)


def test_training_report_without_cuda_has_no_gpu_memory():
    report = TrainingReport(run_id="r", strategy="ddp", world_size=1, samples_per_s=1.0)
    assert report.peak_gpu_memory == ()
    assert json.loads(json.dumps(report.to_dict()))["peak_gpu_memory"] == []
