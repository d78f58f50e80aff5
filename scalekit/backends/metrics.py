"""Scheduler snapshots as events, sampled at a bounded rate.

``snapshot_from_info`` is a pure function of the scheduler's ``scheduler_info()`` dict;
``MetricsSampler`` calls a backend's ``snapshot()`` on a daemon thread and publishes the
result, never faster than every 0.5 s, so a busy panel cannot load the kernel.
"""

from __future__ import annotations

import logging
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


def snapshot_from_info(
    info: Mapping[str, Any],
    *,
    backend: str,
    requested: int | None = None,
    adaptive: tuple[int, int] | None = None,
    dashboard_link: str | None = None,
    details: tuple[tuple[str, str], ...] = (),
) -> ClusterSnapshot:
    """Build a :class:`ClusterSnapshot` from ``Client.scheduler_info()`` output."""
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
