"""Frozen, JSON-safe events and the small thread-safe bus that carries them.

Everything a panel, a magic or the CLI shows comes from these events. The bus keeps the
latest event of each kind and replays it to late subscribers, so a panel created after
the cluster started still shows the current state at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

E = TypeVar("E", bound="Event")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """Base class: a timestamp and a JSON-safe dict form."""

    time: float = dataclasses.field(default_factory=time.time)

    @property
    def key(self) -> str:
        """Replay key: the bus keeps the latest event per key."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the event's type name under ``"type"``."""
        return {"type": type(self).__name__, **dataclasses.asdict(self)}


# --- cluster -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerStats(Event):
    """One worker as the scheduler last saw it (memory in bytes, CPU in percent).

    The ``gpu*`` fields keep their defaults on a worker without a GPU. ``gpus`` is the
    Dask resource ``GPU`` the worker advertises (scalekit's GPU workers: 1, pinned to
    one device with ``CUDA_VISIBLE_DEVICES``); the others come from Dask's NVML
    monitoring and stay ``None``/empty where it is off (nvidia-ml-py missing, no driver).
    """

    name: str
    address: str
    nthreads: int
    cpu: float = 0.0
    memory: int = 0
    memory_limit: int = 0
    status: str = "running"
    gpus: float = 0.0
    gpu_name: str = ""
    gpu_utilization: float | None = None  # percent of the device, latest NVML sample
    gpu_memory: int | None = None  # bytes used on the device (all processes)
    gpu_memory_total: int | None = None

    @property
    def gpu_monitored(self) -> bool:
        """Whether NVML reported on this worker's GPU (utilisation or memory)."""
        return any(v is not None for v in (
            self.gpu_utilization, self.gpu_memory, self.gpu_memory_total))

    @property
    def has_gpu(self) -> bool:
        """A GPU worker: it advertises the ``GPU`` resource or NVML sees a device."""
        return self.gpus > 0 or self.gpu_monitored or bool(self.gpu_name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterSnapshot(Event):
    """The whole cluster at one instant."""

    backend: str
    status: str  # "starting" | "running" | "closed"
    workers: tuple[WorkerStats, ...] = ()
    requested: int | None = None  # target count (None while adaptive decides)
    adaptive: tuple[int, int] | None = None
    dashboard_link: str | None = None
    scheduler_address: str | None = None
    details: tuple[tuple[str, str], ...] = ()  # backend extras, e.g. pod phases

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def total_threads(self) -> int:
        return sum(w.nthreads for w in self.workers)

    @property
    def total_memory(self) -> int:
        return sum(w.memory for w in self.workers)

    @property
    def total_memory_limit(self) -> int:
        return sum(w.memory_limit for w in self.workers)

    @property
    def mean_cpu(self) -> float:
        return sum(w.cpu for w in self.workers) / len(self.workers) if self.workers else 0.0

    @property
    def gpu_workers(self) -> tuple[WorkerStats, ...]:
        """The workers that have a GPU (empty on a CPU-only cluster)."""
        return tuple(w for w in self.workers if w.has_gpu)

    @property
    def mean_gpu_utilization(self) -> float | None:
        """Mean GPU utilisation (percent) of the workers that measured it, else ``None``."""
        values = [w.gpu_utilization for w in self.workers if w.gpu_utilization is not None]
        return sum(values) / len(values) if values else None

    @property
    def total_gpu_memory(self) -> tuple[int, int] | None:
        """``(used, total)`` GPU bytes over the workers that measured their use, else
        ``None`` (total is 0 where no worker knew its device's size)."""
        measured = [w for w in self.workers if w.gpu_memory is not None]
        if not measured:
            return None
        return (sum(w.gpu_memory or 0 for w in measured),
                sum(w.gpu_memory_total or 0 for w in measured))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleRequested(Event):
    """Someone asked for ``n`` workers (``source``: api, slider, magic, training)."""

    n: int
    source: str = "api"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptChanged(Event):
    """Adaptive scaling switched on with bounds, or off (both ``None``)."""

    minimum: int | None = None
    maximum: int | None = None
    source: str = "api"

    @property
    def enabled(self) -> bool:
        return self.maximum is not None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """A line for the status bar of a panel: ``level`` is info, warning or error."""

    level: str
    message: str


# --- bus -----------------------------------------------------------------------------


class EventBus:
    """Publish/subscribe with replay of the latest event per key.

    Callbacks run in the publisher's thread, one publish at a time (a re-entrant lock
    serialises delivery, so a subscriber sees events in publish order and a replay never
    overtakes a newer event). A failing callback is logged and does not stop others.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[Event], None]] = []
        self._latest: dict[str, Event] = {}

    def publish(self, event: Event) -> None:
        with self._lock:
            self._latest[event.key] = event
            for callback in list(self._subscribers):
                self._deliver(callback, event)

    def subscribe(
        self, callback: Callable[[Event], None], *, replay: bool = True
    ) -> Callable[[], None]:
        """Call ``callback`` for each event; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)
            if replay:
                for event in sorted(self._latest.values(), key=lambda e: e.time):
                    self._deliver(callback, event)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def latest(self, kind: type[E]) -> E | None:
        """The last published event of ``kind`` (keyed by its class name)."""
        with self._lock:
            event = self._latest.get(kind.__name__)
        return event if isinstance(event, kind) else None

    @staticmethod
    def _deliver(callback: Callable[[Event], None], event: Event) -> None:
        try:
            callback(event)
        except Exception:  # a broken view must not break the cluster or the training
            logger.exception("event subscriber %r failed on %s", callback, type(event).__name__)


# --- training ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    """A training run began (``max_epochs`` in total, ``batch_size`` global).

    ``sampling`` is ``"exact"`` (every rank can read every sample: the whole set on each
    worker) or ``"sharded"`` (each rank streams its deal of ``n_shards`` shards, which
    hold ``data_bytes`` in memory in all).
    """

    run_id: str
    max_epochs: int
    batch_size: int
    n_samples: int
    world_size: int
    start_epoch: int = 0
    sampling: str = "exact"
    n_shards: int = 0
    data_bytes: int = 0
    source: str = ""  # the sharded source, in words (kind, rows, shards)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankStatus(Event):
    """One rank's state: rendezvous, training, done, failed."""

    run_id: str
    rank: int
    worker: str
    state: str
    generation: int = 0

    @property
    def key(self) -> str:
        return f"RankStatus/{self.rank}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardProgress(Event):
    """One rank's progress through its shards of ``epoch`` (0-based; sharded data only,
    at most a few times a second per rank): ``shards_done`` of ``shards_total`` (and
    rows), bytes read so far this epoch, bytes held in its read buffer now, and the
    seconds its reader thread spent reading (hidden behind compute when it is ahead)."""

    run_id: str
    rank: int
    worker: str
    epoch: int
    shards_done: int
    shards_total: int
    rows_done: int = 0
    rows_total: int = 0
    bytes_read: int = 0
    buffered: int = 0
    read_s: float = 0.0
    generation: int = 0

    @property
    def key(self) -> str:
        return f"ShardProgress/{self.rank}"

    @property
    def fraction(self) -> float:
        """Share of this rank's rows of the epoch trained on (0..1)."""
        return self.rows_done / self.rows_total if self.rows_total else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchProgress(Event):
    """Progress inside an epoch (rank 0, at most a few times per second)."""

    run_id: str
    epoch: int
    batch: int
    n_batches: int
    samples_per_s: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpochEnded(Event):
    """An epoch finished: ``row`` holds the history row's numbers (losses, scores, dur)."""

    run_id: str
    epoch: int
    row: dict[str, float]
    world_size: int

    @property
    def key(self) -> str:
        return f"EpochEnded/{self.epoch}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """The run ended: ``status`` is finished, failed or cancelled."""

    run_id: str
    status: str
    epochs: int
    message: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    """Rank 0 saved a checkpoint (``step`` > 0: inside an epoch)."""

    run_id: str
    epoch: int
    step: int
    url: str
    seconds: float
    nbytes: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resized(Event):
    """The world size changed at a safe point (nothing lost)."""

    run_id: str
    old: int
    new: int
    epoch: int
    reason: str = ""

    @property
    def key(self) -> str:
        return f"Resized/{self.time}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recovered(Event):
    """Training restarted after a failure, from the state at ``epoch``/``step``."""

    run_id: str
    reason: str
    epoch: int
    step: int
    world_size: int
    lost_steps: int = 0
    downtime_s: float = 0.0

    @property
    def key(self) -> str:
        return f"Recovered/{self.time}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingReport(Event):
    """Memory and throughput of a finished run, per rank (bytes; samples/s overall)."""

    run_id: str
    strategy: str
    world_size: int
    samples_per_s: float
    peak_rss: tuple[int, ...] = ()
    state_bytes: tuple[int, ...] = ()
    transport: tuple[str, ...] = ()  # how each rank averaged: "shared memory", "gloo", ...
    # torch.cuda.max_memory_allocated per rank; empty for a run without CUDA
    peak_gpu_memory: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogLine(Event):
    """Lines rank 0 printed while it trained (skorch's ``PrintLog`` rows, ``EarlyStopping``'s
    message, a callback's ``print``): shown once, in the notebook. ``text`` may hold
    several lines; ``stream`` is "stdout" or "stderr"; ``epoch`` is the epoch (1-based)
    they belong to (0 before the first)."""

    run_id: str
    text: str
    stream: str = "stdout"
    epoch: int = 0
    rank: int = 0

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


def event_from_dict(data: dict[str, Any]) -> Event:
    """The event ``Event.to_dict`` made ``data`` from (e.g. a run's log fetched from the
    cluster); lists become the tuples the fields hold.

    Raises
    ------
    ValueError
        For a type that is not one of these events.
    """
    kinds = {cls.__name__: cls for cls in _event_classes(Event)}
    kind = kinds.get(str(data.get("type")))
    if kind is None:
        raise ValueError(f"not a scalekit event: {data.get('type')!r}")
    values = {}
    for field in dataclasses.fields(kind):
        if field.name not in data:
            continue
        value = data[field.name]
        if isinstance(value, list) and "tuple" in str(field.type):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[field.name] = value
    return kind(**values)


def _event_classes(base: type) -> list[type]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_event_classes(sub)]
    return found
