"""Scheduler snapshots from a fake ``scheduler_info()`` dict, and the rate-limited sampler
against a fake source (no cluster, no network)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from scalekit.backends.metrics import MetricsSampler, snapshot_from_info
from scalekit.config import MIN_REFRESH_S
from scalekit.events import ClusterSnapshot, EventBus

INFO = {
    "type": "Scheduler",
    "id": "Scheduler-123",
    "address": "tcp://127.0.0.1:8786",
    "services": {"dashboard": 8787},
    "workers": {
        "tcp://127.0.0.1:4010": {
            "name": 10,
            "nthreads": 2,
            "memory_limit": 2_000_000_000,
            "status": "running",
            "metrics": {"cpu": 55.5, "memory": 300_000_000},
        },
        "tcp://127.0.0.1:4009": {
            "name": 9,
            "nthreads": 2,
            "memory_limit": 2_000_000_000,
            "status": "paused",
            "metrics": {"cpu": 4.0, "memory": 100_000_000},
        },
        "tcp://127.0.0.1:4001": {
            # a worker that has not reported metrics yet
            "nthreads": 1,
        },
    },
}


# -- snapshot_from_info ---------------------------------------------------------------------


def test_snapshot_from_info_maps_every_worker():
    snap = snapshot_from_info(
        INFO,
        backend="local",
        requested=3,
        adaptive=None,
        dashboard_link="http://127.0.0.1:8787/status",
        details=(("note", "x"),),
    )
    assert isinstance(snap, ClusterSnapshot)
    assert snap.status == "running"
    assert snap.backend == "local"
    assert snap.scheduler_address == "tcp://127.0.0.1:8786"
    assert snap.dashboard_link == "http://127.0.0.1:8787/status"
    assert snap.requested == 3
    assert snap.details == (("note", "x"),)
    by_address = {w.address: w for w in snap.workers}
    w10 = by_address["tcp://127.0.0.1:4010"]
    assert (w10.name, w10.nthreads, w10.cpu, w10.memory, w10.memory_limit, w10.status) == (
        "10", 2, 55.5, 300_000_000, 2_000_000_000, "running",
    )
    assert by_address["tcp://127.0.0.1:4009"].status == "paused"
    assert snap.n_workers == 3
    assert snap.total_threads == 5
    assert snap.total_memory == 400_000_000


def test_worker_without_metrics_or_name_gets_defaults():
    snap = snapshot_from_info(INFO, backend="local")
    bare = next(w for w in snap.workers if w.address == "tcp://127.0.0.1:4001")
    assert bare.name == "tcp://127.0.0.1:4001"  # falls back to the address
    assert (bare.cpu, bare.memory, bare.memory_limit, bare.status) == (0.0, 0, 0, "running")


def test_workers_sort_naturally():
    info = {"workers": {f"tcp://h:{i}": {"name": name, "nthreads": 1}
                        for i, name in enumerate(["w10", "w9", "w1", "w2"])}}
    snap = snapshot_from_info(info, backend="local")
    assert [w.name for w in snap.workers] == ["w1", "w2", "w9", "w10"]
    numeric = {"workers": {f"tcp://h:{n}": {"name": n, "nthreads": 1} for n in (10, 9, 0)}}
    assert [w.name for w in snapshot_from_info(numeric, backend="local").workers] == [
        "0", "9", "10",
    ]


@pytest.mark.parametrize("workers", [None, {}])
def test_empty_cluster(workers):
    snap = snapshot_from_info({"address": "tcp://127.0.0.1:1", "workers": workers},
                              backend="local", adaptive=(1, 4))
    assert snap.workers == ()
    assert snap.n_workers == 0
    assert snap.mean_cpu == 0.0
    assert snap.adaptive == (1, 4)


def test_snapshot_is_json_safe():
    import json

    json.dumps(snapshot_from_info(INFO, backend="local").to_dict())


# -- GPUs: scheduler_info() entries as distributed 2026.8 builds them with NVML on -------------
#
# A worker entry is ``WorkerState.identity()`` (distributed/scheduler.py): its fixed keys,
# ``"metrics"`` (the worker's last heartbeat, ``Worker.get_metrics`` in worker.py) and
# ``**extra`` (the worker's startup information). With nvidia-ml-py importable and NVML
# working, ``SystemMonitor`` (distributed/system_monitor.py) samples the flat
# ``gpu_utilization`` / ``gpu_memory_used`` / ``gpu-memory-total`` keys that
# ``get_metrics`` copies from ``monitor.recent()``; ``add_gpu_metrics`` (worker.py) adds
# ``metrics["gpu"] = nvml.real_time()`` and ``extra["gpu"] = nvml.one_time()`` only for
# workers built after NVML was initialised in their process (not a nanny's first worker).

GIB = 2**30
H200_TOTAL = 150_754_820_096  # bytes, as NVML reports an H200's memory


def nvml_worker(name: str, port: int, *, utilization: int | None = 37,
                used: int | None = 14 * GIB, total: int | None = H200_TOTAL,
                resources: dict[str, float] | None = None,
                startup: bool = False) -> tuple[str, dict]:
    """One ``scheduler_info()["workers"]`` item of a worker whose NVML sees a GPU."""
    address = f"tcp://127.0.0.1:{port}"
    metrics = {
        "task_counts": {}, "bandwidth": {"total": 1e8, "workers": {}, "types": {}},
        "digests_total_since_heartbeat": {}, "managed_bytes": 0,
        "spilled_bytes": {"memory": 0, "disk": 0},
        "transfer": {"incoming_bytes": 0, "incoming_count": 0, "incoming_count_total": 0,
                     "outgoing_bytes": 0, "outgoing_count": 0, "outgoing_count_total": 0},
        "event_loop_interval": 0.02,
        # monitor.recent(): "a.b" keys nest, the GPU keys are flat
        "cpu": 98.0, "memory": 3 * GIB, "time": 1.7e9,
        "host_net_io": {"read_bps": 0.0, "write_bps": 0.0},
        "host_disk_io": {"read_bps": 0.0, "write_bps": 0.0}, "num_fds": 40,
        "gpu-memory-total": total, "gpu_utilization": utilization, "gpu_memory_used": used,
    }
    entry = {
        "type": "Worker", "id": name, "host": "127.0.0.1", "resources": resources or {},
        "local_directory": "/tmp/dask-scratch-space/worker-x", "name": name, "nthreads": 4,
        "memory_limit": 16 * GIB, "last_seen": 1.7e9, "services": {"dashboard": 40001},
        "metrics": metrics, "status": "running", "nanny": "tcp://127.0.0.1:40100",
    }
    if startup:
        metrics["gpu"] = {"utilization": utilization, "memory-used": used}
        entry["gpu"] = {"memory-total": total, "name": "NVIDIA H200"}
    return address, entry


def test_nanny_gpu_worker_reads_nvml_metrics_and_the_gpu_resource():
    info = {"address": "tcp://127.0.0.1:8786",
            "workers": dict([nvml_worker("gpu-0", 4000, resources={"GPU": 1})])}
    [w] = snapshot_from_info(info, backend="local").workers
    assert (w.gpus, w.gpu_name, w.gpu_utilization, w.gpu_memory, w.gpu_memory_total) == (
        1.0, "", 37.0, 14 * GIB, H200_TOTAL)
    assert w.has_gpu and w.gpu_monitored
    assert (w.cpu, w.memory, w.nthreads) == (98.0, 3 * GIB, 4)  # CPU side as before


def test_gpu_name_comes_from_the_startup_information_when_there():
    info = {"workers": dict([nvml_worker("w", 4000, startup=True)])}
    [w] = snapshot_from_info(info, backend="local").workers
    assert w.gpu_name == "NVIDIA H200" and w.gpus == 0.0  # NVML alone: a GPU, no resource
    assert w.has_gpu and w.gpu_memory_total == H200_TOTAL


def test_nvml_not_supported_values_stay_unknown():
    # NVML answers None for what a device can't tell (e.g. utilisation of a MIG slice)
    address, entry = nvml_worker("mig", 4000, utilization=None, total=None, startup=True)
    entry["gpu"]["memory-total"] = 20 * GIB  # the startup copy still knows the size
    [w] = snapshot_from_info({"workers": {address: entry}}, backend="local").workers
    assert w.gpu_utilization is None and w.gpu_memory == 14 * GIB
    assert w.gpu_memory_total == 20 * GIB and w.gpu_monitored


def test_gpu_worker_without_nvidia_ml_py_is_still_a_gpu_worker():
    address, entry = nvml_worker("gpu-1", 4001, resources={"GPU": 1.0})
    for key in ("gpu-memory-total", "gpu_utilization", "gpu_memory_used"):
        del entry["metrics"][key]  # what a worker without pynvml sends
    [w] = snapshot_from_info({"workers": {address: entry}}, backend="local").workers
    assert w.has_gpu and not w.gpu_monitored
    assert (w.gpus, w.gpu_name, w.gpu_utilization, w.gpu_memory, w.gpu_memory_total) == (
        1.0, "", None, None, None)


def test_cpu_workers_keep_the_no_gpu_defaults():
    snap = snapshot_from_info(INFO, backend="local")
    assert snap.gpu_workers == ()
    assert all((w.gpus, w.gpu_utilization, w.gpu_memory_total) == (0.0, None, None)
               for w in snap.workers)


def test_gpu_snapshot_is_strict_json():
    import json

    info = {"workers": dict([nvml_worker("a", 4000, resources={"GPU": 1}, startup=True),
                             nvml_worker("b", 4001, utilization=None, used=None)])}
    data = json.loads(json.dumps(snapshot_from_info(info, backend="local").to_dict(),
                                 allow_nan=False))
    a, b = data["workers"]
    assert a["gpu_name"] == "NVIDIA H200" and a["gpu_memory_total"] == H200_TOTAL
    assert b["gpu_utilization"] is None and b["gpu_memory"] is None


# -- MetricsSampler -------------------------------------------------------------------------


class FakeSource:
    """Counts calls; returns running snapshots until told to report "closed"."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[float] = []
        self.closed = False
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self) -> ClusterSnapshot:
        with self.lock:
            self.calls.append(time.monotonic())
            if len(self.calls) <= self.fail_first:
                raise OSError("scheduler not reachable")
        status = "closed" if self.closed else "running"
        return ClusterSnapshot(backend="fake", status=status)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


def test_interval_is_clamped_to_two_hertz(bus):
    assert MetricsSampler(FakeSource(), bus, interval=0.01).interval == MIN_REFRESH_S == 0.5
    assert MetricsSampler(FakeSource(), bus, interval=2).interval == 2.0


def test_sample_once_publishes(bus):
    source = FakeSource()
    seen = []
    bus.subscribe(seen.append)
    sampler = MetricsSampler(source, bus)
    snap = sampler.sample_once()
    assert snap is not None and seen == [snap]
    assert sampler.samples == 1
    assert not sampler.running  # sample_once does not start the thread


def test_rate_never_above_two_hertz_even_when_poked(bus):
    source = FakeSource()
    sampler = MetricsSampler(source, bus, interval=0.5).start()
    try:
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:  # poke as fast as we can
            sampler.poke()
            time.sleep(0.001)
    finally:
        sampler.stop()
    calls = list(source.calls)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) >= 3, calls  # it kept sampling while being poked
    assert len(calls) <= 2.2 / 0.5 + 1
    assert min(gaps) >= MIN_REFRESH_S - 0.02, gaps


def test_poke_samples_sooner_than_a_long_interval(bus):
    source = FakeSource()
    sampler = MetricsSampler(source, bus, interval=30).start()
    try:
        assert wait_until(lambda: len(source.calls) == 1)
        time.sleep(MIN_REFRESH_S)
        sampler.poke()
        assert wait_until(lambda: len(source.calls) == 2, timeout=2.0)
    finally:
        sampler.stop()


def test_stops_on_a_closed_snapshot(bus):
    source = FakeSource()
    sampler = MetricsSampler(source, bus, interval=0.5).start()
    try:
        assert wait_until(lambda: len(source.calls) >= 1)
        source.closed = True
        sampler.poke()
        assert wait_until(lambda: not sampler.running, timeout=3.0)
        n = len(source.calls)
        time.sleep(1.2)
        assert len(source.calls) == n
        assert bus.latest(ClusterSnapshot).status == "closed"
    finally:
        sampler.stop()


def test_stop_ends_the_thread_promptly(bus):
    source = FakeSource()
    sampler = MetricsSampler(source, bus, interval=10).start()
    assert wait_until(lambda: len(source.calls) >= 1)
    assert sampler.running
    started = time.monotonic()
    sampler.stop()
    assert time.monotonic() - started < 1.0
    assert not sampler.running
    n = len(source.calls)
    sampler.poke()
    time.sleep(0.7)
    assert len(source.calls) == n
    sampler.stop()  # idempotent


def test_source_errors_do_not_kill_the_sampler(bus):
    source = FakeSource(fail_first=2)
    sampler = MetricsSampler(source, bus, interval=0.5).start()
    try:
        assert wait_until(lambda: sampler.samples >= 1, timeout=4.0)
        assert sampler.running
        assert len(source.calls) >= 3
    finally:
        sampler.stop()
