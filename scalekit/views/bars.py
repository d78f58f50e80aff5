"""The bars of a worker's row, decided once: how full, what label, whether to warn.

The notebook panel draws them as HTML (:mod:`scalekit.views.cluster_render`), the
JupyterLab sidebar from the snapshot (:mod:`scalekit.views.snapshot` sends them as
JSON): the same fraction and the same label in both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scalekit.events import WorkerStats
from scalekit.views.fmt import gib, plural

__all__ = ["MEMORY_WARN", "Bar", "cpu_bar", "memory_bar", "memory_text", "worker_title"]

MEMORY_WARN = 0.8  # a worker's memory bar turns orange from this fraction of its limit


@dataclasses.dataclass(frozen=True)
class Bar:
    """A horizontal bar: ``fraction`` (0..1) filled, ``label`` beside it, ``warn``
    drawn in the warning colour, ``over`` past its limit (the danger colour)."""

    fraction: float
    label: str
    warn: bool = False
    over: bool = False

    @classmethod
    def of(cls, fraction: float, label: str, *, warn_at: float | None = None) -> Bar:
        """A bar for ``fraction`` (clamped); ``warn_at`` turns it orange from there."""
        over = fraction > 1.0
        warn = over or (warn_at is not None and fraction >= warn_at)
        return cls(min(max(float(fraction), 0.0), 1.0), label, warn, over)

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": round(self.fraction, 4), "label": self.label, "warn": self.warn}


def memory_text(used: int, limit: int) -> str:
    """``"0.25 / 11.77 GiB"``, ``"0.25 GiB (no limit)"`` without one."""
    return f"{gib(used)} / {gib(limit)} GiB" if limit else f"{gib(used)} GiB (no limit)"


def cpu_bar(w: WorkerStats) -> Bar:
    """CPU in percent of the worker's threads (psutil's figure is percent of one core:
    a busy worker of 2 threads reads 200 %)."""
    capacity = 100.0 * max(w.nthreads, 1)
    return Bar.of(w.cpu / capacity, f"{w.cpu:.0f} %")


def memory_bar(w: WorkerStats) -> Bar:
    """Memory of the worker's limit, orange from :data:`MEMORY_WARN`."""
    fraction = w.memory / w.memory_limit if w.memory_limit > 0 else 0.0
    return Bar.of(fraction, memory_text(w.memory, w.memory_limit), warn_at=MEMORY_WARN)


def worker_title(w: WorkerStats) -> str:
    """A worker's tooltip: ``"tcp://127.0.0.1:4000 · 1 thread"``."""
    return f"{w.address} · {plural(w.nthreads, 'thread')}"
