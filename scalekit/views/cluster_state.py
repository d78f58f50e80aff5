"""Fold a session's cluster events into what a view of the cluster shows.

:class:`ClusterState` keeps the latest :class:`~scalekit.events.ClusterSnapshot`, the
latest intents (:class:`~scalekit.events.ScaleRequested`,
:class:`~scalekit.events.AdaptChanged`), the latest :class:`~scalekit.events.Notice`
and a short CPU/memory history. The live cluster panel and the JupyterLab snapshots
both read it, so "what the cluster is about to become" is decided once: an intent newer
than the last sample wins, because the sample does not know about it yet.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from scalekit.events import AdaptChanged, ClusterSnapshot, Event, Notice, ScaleRequested

__all__ = ["ClusterState", "cpu_percent", "memory_percent", "used_fraction"]


def used_fraction(used: float, limit: float) -> float:
    """``used / limit``, 0 without a limit."""
    return used / limit if limit > 0 else 0.0


def cpu_percent(snapshot: ClusterSnapshot) -> float:
    """Cluster CPU use in percent of its capacity (100 % = every thread busy)."""
    capacity = 100.0 * snapshot.total_threads
    return 100.0 * used_fraction(sum(w.cpu for w in snapshot.workers), capacity)


def memory_percent(snapshot: ClusterSnapshot) -> float:
    """Cluster memory use in percent of the summed worker limits (0 without limits)."""
    return 100.0 * used_fraction(snapshot.total_memory, snapshot.total_memory_limit)


@dataclasses.dataclass
class ClusterState:
    """The latest cluster events of one bus, and the CPU/memory history.

    Attributes
    ----------
    snapshot : ClusterSnapshot or None
        The latest sample (``None`` before the first).
    adapt, scale : AdaptChanged, ScaleRequested or None
        The latest intents.
    notice : Notice or None
        The latest status message.
    history : int
        How many running samples :attr:`cpu_history` and :attr:`memory_history` keep.
    cpu_history, memory_history : deque of float
        :func:`cpu_percent` and :func:`memory_percent` of each running sample.
    """

    snapshot: ClusterSnapshot | None = None
    adapt: AdaptChanged | None = None
    scale: ScaleRequested | None = None
    notice: Notice | None = None
    history: int = 120
    cpu_history: deque[float] = dataclasses.field(init=False)
    memory_history: deque[float] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        size = max(int(self.history), 2)
        self.cpu_history = deque(maxlen=size)
        self.memory_history = deque(maxlen=size)

    def apply(self, event: Event) -> bool:
        """Fold one event in; return whether it was a cluster event."""
        if isinstance(event, ClusterSnapshot):
            self.snapshot = event
            if event.status == "running":
                self.cpu_history.append(cpu_percent(event))
                self.memory_history.append(memory_percent(event))
        elif isinstance(event, AdaptChanged):
            self.adapt = event
        elif isinstance(event, ScaleRequested):
            self.scale = event
        elif isinstance(event, Notice):
            self.notice = event
        else:
            return False
        return True

    @property
    def live(self) -> bool:
        """Whether there is a cluster to show: sampled, and not closed."""
        return self.snapshot is not None and self.snapshot.status != "closed"

    @property
    def adaptive(self) -> tuple[int, int] | None:
        """Adaptive ``(minimum, maximum)``, or ``None`` when off; a newer intent wins."""
        bounds = self.snapshot.adaptive if self.snapshot is not None else None
        adapt = self.adapt
        if adapt is not None and (self.snapshot is None or adapt.time >= self.snapshot.time):
            if not adapt.enabled:
                return None
            return (adapt.minimum or 0, adapt.maximum or 0)
        return bounds

    @property
    def requested(self) -> int | None:
        """The worker count asked for; a newer :class:`ScaleRequested` wins."""
        requested = self.snapshot.requested if self.snapshot is not None else None
        scale = self.scale
        if scale is not None and (self.snapshot is None or scale.time >= self.snapshot.time):
            return scale.n
        return requested
