"""Fold a session's cluster events into what a view of the cluster shows.

:class:`ClusterState` keeps the latest :class:`~scalekit.events.ClusterSnapshot`, the
latest intents (:class:`~scalekit.events.ScaleRequested`,
:class:`~scalekit.events.AdaptChanged`), the latest :class:`~scalekit.events.Notice`
and a short CPU/memory history. The live cluster panel and the JupyterLab snapshots
both read it, so "what the cluster is about to become" is decided once: an intent newer
than the last sample wins, because the sample does not know about it yet.

It also decides how long a notice holds (:attr:`ClusterState.status_line`): "scaling
to 3 workers" is done once a later sample shows the 3 workers, and a training run's
"recovering: ..." once the run trains again; an error stays until the next notice.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from scalekit.events import (
    AdaptChanged,
    ClusterSnapshot,
    Event,
    Notice,
    RankStatus,
    Recovered,
    RunFinished,
    ScaleRequested,
)

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
    history_times : deque of float
        When each of those samples was taken (the sparkline's time span).
    trained_at : float
        When a training run last went on (a rank trained, a recovery, the run's end):
        the moment a training warning stops holding.
    """

    snapshot: ClusterSnapshot | None = None
    adapt: AdaptChanged | None = None
    scale: ScaleRequested | None = None
    notice: Notice | None = None
    history: int = 120
    cpu_history: deque[float] = dataclasses.field(init=False)
    memory_history: deque[float] = dataclasses.field(init=False)
    history_times: deque[float] = dataclasses.field(init=False)
    trained_at: float = 0.0

    def __post_init__(self) -> None:
        size = max(int(self.history), 2)
        self.cpu_history = deque(maxlen=size)
        self.memory_history = deque(maxlen=size)
        self.history_times = deque(maxlen=size)

    def apply(self, event: Event) -> bool:
        """Fold one event in; return whether it was a cluster event.

        Training events that mean "the run goes on" are noted (a training warning
        stops holding) but are not cluster events: the caller folds them elsewhere.
        """
        if isinstance(event, (Recovered, RunFinished)) or (
                isinstance(event, RankStatus) and event.state == "training"):
            self.trained_at = max(self.trained_at, event.time)
            return False
        if isinstance(event, ClusterSnapshot):
            self.snapshot = event
            if event.status == "running":
                self.cpu_history.append(cpu_percent(event))
                self.memory_history.append(memory_percent(event))
                self.history_times.append(event.time)
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

    @property
    def history_span_s(self) -> float:
        """Seconds the CPU/memory history covers (0 with fewer than two samples)."""
        times = self.history_times
        return times[-1] - times[0] if len(times) > 1 else 0.0

    @property
    def settled(self) -> bool:
        """Whether the latest sample shows the cluster as asked: adaptive on, or the
        requested number of workers there."""
        s = self.snapshot
        if s is None or s.status != "running":
            return False
        if self.adaptive is not None:
            return s.adaptive is not None
        requested = self.requested
        return requested is None or s.n_workers == requested

    @property
    def status_line(self) -> tuple[str, str] | None:
        """``(level, message)`` of the notice while it holds, else ``None``.

        - an error holds until the next notice;
        - a warning (a training run's ``recovering: ...``) until the run trains again
          after it;
        - an info (``scaling to 3 workers``) until a later sample shows the cluster
          :attr:`settled`: it says what is under way, not what is.
        """
        notice = self.notice
        if notice is None:
            return None
        if notice.level == "warning" and self.trained_at >= notice.time:
            return None
        if notice.level == "info" and self.snapshot is not None and \
                self.snapshot.time > notice.time and self.settled:
            return None
        return notice.level, notice.message
