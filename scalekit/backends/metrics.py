"""Scheduler snapshots as events, sampled at a bounded rate.

``snapshot_from_info`` is a pure function of the scheduler's ``scheduler_info()`` dict;
``MetricsSampler`` calls a backend's ``snapshot()`` on a daemon thread and publishes the
result, never faster than every 0.5 s, so a busy panel cannot load the kernel.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from scalekit.config import MIN_REFRESH_S
from scalekit.events import ClusterSnapshot, EventBus, WorkerStats

logger = logging.getLogger(__name__)


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key so that worker 'w10' follows 'w9' and numeric names sort as numbers."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


GPU_RESOURCE = "GPU"  # the Dask resource scalekit's GPU workers advertise (GPU=1)


def _finite(value: Any) -> float | None:
    """A finite number as float, else ``None`` (NVML answers ``None`` when unsupported)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _bytes(value: Any) -> int | None:
    number = _finite(value)
    return int(number) if number is not None and number >= 0 else None


def gpu_fields(worker: Mapping[str, Any]) -> dict[str, Any]:
    """The GPU fields of :class:`WorkerStats` from one ``scheduler_info()`` worker entry.

    Where distributed (2026.8) puts what its NVML monitoring sees, with
    ``distributed.diagnostics.nvml`` on and nvidia-ml-py importable in the worker:

    - ``entry["metrics"]["gpu_utilization"]`` (percent), ``["gpu_memory_used"]`` and
      ``["gpu-memory-total"]`` (bytes): ``SystemMonitor.__init__``/``update`` in
      ``distributed/system_monitor.py`` record them, ``Worker.get_metrics`` copies
      ``monitor.recent()`` into the heartbeat's metrics (``worker.py``), and
      ``WorkerState.identity`` (``scheduler.py``) returns them as ``"metrics"``. The
      dashboard's GPU plots read these same keys (``dashboard/components/nvml.py``).
    - ``entry["metrics"]["gpu"] == {"utilization", "memory-used"}`` and
      ``entry["gpu"] == {"memory-total", "name"}``: ``add_gpu_metrics`` (``worker.py``)
      registers them in ``DEFAULT_METRICS``/``DEFAULT_STARTUP_INFORMATION`` when NVML is
      first initialised in a process, and the startup information is spread into the
      entry by ``WorkerState.identity`` (``**self.extra``). A worker copies those tables
      *before* its system monitor initialises NVML, so the first worker of a spawned
      process (every nanny's) usually lacks them: the name is a bonus, the flat keys
      are the source.

    NVML reads the first device of the worker's ``CUDA_VISIBLE_DEVICES``
    (``nvml._pynvml_handles``), so a pinned worker reports its own GPU. Any value may be
    ``None`` (NVML's "not supported", e.g. utilisation of a MIG slice).
    ``entry["resources"]["GPU"]`` is the resource the worker advertises; it needs no
    NVML, so a GPU worker without nvidia-ml-py is still known as one.
    """
    metrics = worker.get("metrics") or {}
    sampled = metrics.get("gpu") if isinstance(metrics.get("gpu"), Mapping) else {}
    startup = worker.get("gpu") if isinstance(worker.get("gpu"), Mapping) else {}
    nvml_on = "gpu-memory-total" in metrics or bool(sampled) or bool(startup)
    resources = worker.get("resources") or {}
    gpus = _finite(resources.get(GPU_RESOURCE)) or 0.0
    if not nvml_on:
        return {"gpus": max(gpus, 0.0)}
    utilization = _finite(metrics.get("gpu_utilization", sampled.get("utilization")))
    used = _bytes(metrics.get("gpu_memory_used", sampled.get("memory-used")))
    # the monitor's total is None where NVML can't tell; the startup copy may know
    total = _bytes(metrics.get("gpu-memory-total")) or _bytes(startup.get("memory-total"))
    name = startup.get("name")
    return {
        "gpus": max(gpus, 0.0),
        "gpu_name": name if isinstance(name, str) else "",
        "gpu_utilization": utilization,
        "gpu_memory": used,
        "gpu_memory_total": total or None,
    }


def snapshot_from_info(
    info: Mapping[str, Any],
    *,
    backend: str,
    requested: int | None = None,
    adaptive: tuple[int, int] | None = None,
    dashboard_link: str | None = None,
    details: tuple[tuple[str, str], ...] = (),
) -> ClusterSnapshot:
    """Build a :class:`ClusterSnapshot` from ``Client.scheduler_info()`` output.

    Workers keep their GPU's name, utilisation and memory where Dask's NVML monitoring
    reports them, and the ``GPU`` resource they advertise (see :func:`gpu_fields`).
    """
    now = time.time()
    workers = []
    for address, w in (info.get("workers") or {}).items():
        metrics = w.get("metrics") or {}
        workers.append(
            WorkerStats(
                time=now,
                name=str(w.get("name", address)),
                address=address,
                nthreads=int(w.get("nthreads") or 0),
                cpu=float(metrics.get("cpu") or 0.0),
                memory=int(metrics.get("memory") or 0),
                memory_limit=int(w.get("memory_limit") or 0),
                status=str(w.get("status", "running")),
                **gpu_fields(w),
            )
        )
    workers.sort(key=lambda w: _natural(w.name))
    return ClusterSnapshot(
        time=now,
        backend=backend,
        status="running",
        workers=tuple(workers),
        requested=requested,
        adaptive=adaptive,
        dashboard_link=dashboard_link,
        scheduler_address=info.get("address"),
        details=details,
    )


class MetricsSampler:
    """Publish ``source()`` on ``bus`` every ``interval`` seconds until stopped.

    Parameters
    ----------
    source : callable
        Returns a fresh :class:`ClusterSnapshot` (usually ``backend.snapshot``).
    bus : EventBus
        Where snapshots go.
    interval : float
        Seconds between samples; clamped to at least 0.5 s.
    """

    def __init__(
        self, source: Callable[[], ClusterSnapshot], bus: EventBus, interval: float = 0.5
    ) -> None:
        self._source = source
        self._bus = bus
        self.interval = max(float(interval), MIN_REFRESH_S)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0

    def start(self) -> MetricsSampler:
        self._thread = threading.Thread(target=self._run, name="scalekit-metrics", daemon=True)
        self._thread.start()
        return self

    def poke(self) -> None:
        """Sample now (e.g. right after a scale request) instead of at the next tick."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sample_once(self) -> ClusterSnapshot | None:
        try:
            snapshot = self._source()
        except Exception as exc:  # a scheduler hiccup must not kill the sampler
            if not self._stop.is_set():
                logger.debug("metrics sample failed: %s", exc)
            return None
        self.samples += 1
        self._bus.publish(snapshot)
        return snapshot

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            # a poke may shorten the wait, but never below the minimum period
            wait = max(0.0, last + MIN_REFRESH_S - time.monotonic())
            if wait:
                self._stop.wait(wait)
            if self._stop.is_set():
                break
            last = time.monotonic()
            snapshot = self.sample_once()
            if snapshot is not None and snapshot.status == "closed":
                break
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - last)))
            self._wake.clear()
