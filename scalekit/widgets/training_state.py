"""Fold a run's training events into one plain state object.

:class:`TrainingState` is what the training panel, ``repr(run)`` and the HTML/text
fallbacks draw. It is pure data: no ipywidgets, no clocks except the events' own
timestamps (and ``time.time()`` for the elapsed time of a run still going).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Any

from scalekit.events import (
    BatchProgress,
    EpochEnded,
    Event,
    Notice,
    RankStatus,
    RunFinished,
    RunStarted,
)

__all__ = ["RankInfo", "TrainingState", "is_number"]

# Row keys that are not scores: drawn elsewhere (throughput, duration) or not at all.
NOT_SCORES = frozenset({"epoch", "dur", "batches", "train_samples_per_s"})


def is_number(value: Any) -> bool:
    """A finite int/float that is not a bool (bools in a row are ``*_best`` markers)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _shown_key(key: str) -> bool:
    """skorch's ``filter_log_keys``: no ``*_best``, ``*_batch_count`` or ``event_*``."""
    return not (
        key in NOT_SCORES
        or key.endswith(("_best", "_batch_count"))
        or key.startswith("event_")
    )


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """One rank as its last :class:`~scalekit.events.RankStatus` described it."""

    rank: int
    worker: str
    state: str
    generation: int = 0


@dataclasses.dataclass
class TrainingState:
    """Everything known about one training run, folded from its events.

    Attributes
    ----------
    run_id : str or None
        The run; ``None`` until the first event with a ``run_id`` is applied (then
        events of any other run are ignored).
    status : str
        ``waiting`` (no event yet), ``running``, ``finished``, ``failed`` or
        ``cancelled``.
    max_epochs, start_epoch, batch_size, n_samples : int or None
        From :class:`~scalekit.events.RunStarted`; epochs count from the net's first
        epoch (a warm-started net's earlier epochs included).
    rows : list of dict
        One history row per finished epoch, oldest first (``row["epoch"]`` is the
        1-based epoch number). A row for an epoch already seen replaces it and drops
        the later ones (the run rolled back to a checkpoint).
    world_sizes : list of (int, int)
        ``(epoch, world_size)`` each time the number of ranks changed; the first entry
        is the size at the start, later ones the first epoch trained at a new size.
    ranks : dict of int to RankInfo
        The ranks of the newest generation (process group).
    failures : list of RankInfo
        Every rank that reported ``failed``, any generation.
    batch : (int, int, int) or None
        ``(epoch_index, batch, n_batches)`` of the epoch in progress (0-based index).
    samples_per_s : float or None
        The latest throughput (from a batch or an epoch row).
    message : str
        Why the run ended, when it failed.
    notice : (str, str) or None
        ``(level, message)`` of the latest :class:`~scalekit.events.Notice`.
    version : int
        Grows each time ``rows`` changes (views redraw tables and charts only then).
    numeric_keys : dict of str to None
        Every key with a number in some row, in first-seen order.
    """

    run_id: str | None = None
    status: str = "waiting"
    max_epochs: int | None = None
    start_epoch: int = 0
    batch_size: int | None = None
    n_samples: int | None = None
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    world_sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    ranks: dict[int, RankInfo] = dataclasses.field(default_factory=dict)
    generation: int = 0
    failures: list[RankInfo] = dataclasses.field(default_factory=list)
    batch: tuple[int, int, int] | None = None
    samples_per_s: float | None = None
    message: str = ""
    notice: tuple[str, str] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    version: int = 0
    numeric_keys: dict[str, None] = dataclasses.field(default_factory=dict)

    # -- folding -------------------------------------------------------------------------
    @classmethod
    def from_events(cls, events: Iterable[Event], run_id: str | None = None) -> TrainingState:
        """Fold ``events`` in order.

        Parameters
        ----------
        events : iterable of Event
            Training events (others are skipped); every :class:`Notice` counts.
        run_id : str, optional
            Keep only this run's events; by default the first run seen.

        Returns
        -------
        TrainingState
        """
        state = cls(run_id=run_id)
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: Event) -> bool:
        """Fold one event in; return whether it concerned this run (and changed it)."""
        if isinstance(event, Notice):
            self.notice = (event.level, event.message)
            return True
        run_id = getattr(event, "run_id", None)
        if run_id is None:
            return False
        if self.run_id is None:
            self.run_id = run_id
        elif run_id != self.run_id:
            return False
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, EpochEnded):
            self._epoch(event)
        elif isinstance(event, BatchProgress):
            self._begin(event.time)
            self.batch = (event.epoch, event.batch, event.n_batches)
            self.samples_per_s = float(event.samples_per_s)
        elif isinstance(event, RankStatus):
            self._rank(event)
        elif isinstance(event, RunFinished):
            self._begin(event.time)
            self.status, self.message = event.status, event.message
            self.finished_at, self.batch = event.time, None
        else:
            return False
        return True

    def _begin(self, when: float) -> None:
        if self.status == "waiting":
            self.status = "running"
        if self.started_at is None:
            self.started_at = when

    def _started(self, e: RunStarted) -> None:
        self._begin(e.time)
        self.started_at = e.time
        self.max_epochs, self.start_epoch = e.max_epochs, e.start_epoch
        self.batch_size, self.n_samples = e.batch_size, e.n_samples
        self._world(e.start_epoch, e.world_size)

    def _epoch(self, e: EpochEnded) -> None:
        self._begin(e.time)
        row = dict(e.row)
        row["epoch"] = int(e.epoch)
        self.rows = [r for r in self.rows if r["epoch"] < e.epoch]
        self.rows.append(row)
        self.numeric_keys.update((k, None) for k, v in row.items() if is_number(v))
        self.version += 1
        self._world(e.epoch, e.world_size)
        if self.batch is not None and self.batch[0] + 1 <= e.epoch:
            self.batch = None  # that epoch is over
        if is_number(row.get("train_samples_per_s")):
            self.samples_per_s = float(row["train_samples_per_s"])

    def _world(self, epoch: int, size: int | None) -> None:
        if size is None:
            return
        if not self.world_sizes:
            self.world_sizes.append((int(epoch), int(size)))
            return
        # a rollback forgets sizes recorded for the epochs that are redone
        while len(self.world_sizes) > 1 and self.world_sizes[-1][0] >= epoch:
            self.world_sizes.pop()
        if self.world_sizes[-1][1] != size:
            self.world_sizes.append((int(epoch), int(size)))

    def _rank(self, e: RankStatus) -> None:
        self._begin(e.time)
        info = RankInfo(rank=e.rank, worker=e.worker, state=e.state, generation=e.generation)
        if e.state == "failed" and info not in self.failures:
            self.failures.append(info)
        if e.generation < self.generation:
            return  # a group that no longer exists
        if e.generation > self.generation:
            self.generation = e.generation
            self.ranks = {}
        self.ranks[e.rank] = info

    # -- derived ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def epochs_done(self) -> int:
        """The last finished epoch's number (the start epoch before any finished)."""
        return int(self.rows[-1]["epoch"]) if self.rows else self.start_epoch

    @property
    def world_size(self) -> int | None:
        """The current number of ranks."""
        return self.world_sizes[-1][1] if self.world_sizes else None

    @property
    def world_size_changes(self) -> list[tuple[int, int, int]]:
        """``(epoch, before, after)`` for each change of the world size."""
        sizes = self.world_sizes
        return [(sizes[i][0], sizes[i - 1][1], sizes[i][1]) for i in range(1, len(sizes))]

    @property
    def batch_fraction(self) -> float:
        """How much of the epoch in progress is done (0 when none is)."""
        if self.batch is None or not self.running:
            return 0.0
        epoch_index, batch, n_batches = self.batch
        if epoch_index < self.epochs_done or n_batches <= 0:
            return 0.0
        return min(max(batch / n_batches, 0.0), 1.0)

    @property
    def mean_epoch_dur(self) -> float | None:
        """Mean of the rows' ``dur`` (seconds), or ``None`` before the first epoch."""
        durs = [float(r["dur"]) for r in self.rows if is_number(r.get("dur"))]
        return sum(durs) / len(durs) if durs else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the mean epoch duration; ``None`` when unknown or over."""
        mean = self.mean_epoch_dur
        if not self.running or mean is None or self.max_epochs is None:
            return None
        remaining = self.max_epochs - self.epochs_done - self.batch_fraction
        return max(remaining, 0.0) * mean

    def elapsed_s(self, now: float | None = None) -> float | None:
        """Seconds from the start to the end (or to ``now`` while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (now or time.time())
        return max(end - self.started_at, 0.0)

    def _keys(self) -> list[str]:
        return [k for k in self.numeric_keys if _shown_key(k)]

    @property
    def loss_keys(self) -> list[str]:
        """Row keys ending in ``_loss`` (train first, then valid, then the rest)."""
        keys = [k for k in self._keys() if k.endswith("_loss")]
        order = {"train_loss": 0, "valid_loss": 1}
        return sorted(keys, key=lambda k: (order.get(k, 2), k))

    @property
    def score_keys(self) -> list[str]:
        """Other numeric scores in the rows (``valid_acc``, ...), sorted."""
        return sorted(k for k in self._keys() if not k.endswith("_loss"))

    @property
    def table_keys(self) -> list[str]:
        """Columns as skorch's ``PrintLog`` orders them: epoch, sorted keys, dur."""
        keys = ["epoch", *sorted(self._keys())]
        keys += sorted(k for k in self.numeric_keys if k.startswith("event_"))
        if "dur" in self.numeric_keys:
            keys.append("dur")
        return keys

    def series(self, key: str) -> list[float | None]:
        """``key``'s value in each row (``None`` where a row lacks it)."""
        return [float(r[key]) if is_number(r.get(key)) else None for r in self.rows]

    @staticmethod
    def is_best(row: dict[str, Any], key: str) -> bool:
        """Whether ``row`` marks ``key`` as the best so far (skorch's ``<key>_best``)."""
        return bool(row.get(f"{key}_best"))
