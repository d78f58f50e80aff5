"""Fold a run's training events into one plain state object.

:class:`TrainingState` is what the training panel, ``repr(run)`` and the HTML/text
fallbacks draw. It is pure data: no ipywidgets, no clocks except the events' own
timestamps (and ``time.time()`` for the elapsed time of a run still going).

Besides the epoch log it keeps the run's timeline: resizes, failures, recoveries and
checkpoints (:mod:`scalekit.views.timeline`), the world size per epoch, the totals
of the recoveries and, on sharded data, each rank's progress through its shards.
Failed ranks are folded into one incident per process group
(:mod:`scalekit.views.incidents`), the throughput is measured from the progress
events (:mod:`scalekit.views.throughput`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    Event,
    Notice,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    RunStarted,
    ShardProgress,
    TrainingReport,
)
from scalekit.views.columns import EpochColumns
from scalekit.views.fmt import is_number
from scalekit.views.incidents import Incident, Incidents, RankInfo
from scalekit.views.throughput import Throughput, throughput_text
from scalekit.views.timeline import (
    TimelineEntry,
    checkpoint_entry,
    failure_entry,
    recovery_entry,
    resize_entry,
)

__all__ = ["RankInfo", "TimelineEntry", "TrainingState"]


@dataclasses.dataclass
class TrainingState(EpochColumns):
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
        the later ones (the run rolled back to a checkpoint); so does a
        :class:`~scalekit.events.Recovered` from an earlier epoch (those are re-run).
    world_sizes : list of (int, int)
        ``(epoch, world_size)`` each time the number of ranks changed; the first entry
        is the size at the start, later ones the first epoch (1-based) trained at a new
        size, from the epoch rows, :class:`~scalekit.events.Resized` and
        :class:`~scalekit.events.Recovered`. A rollback forgets the redone epochs' sizes.
    ranks : dict of int to RankInfo
        The ranks of the newest generation (process group).
    incidents : Incidents
        The ranks that stopped, one incident per generation: the rank that failed
        and those that stopped with it.
    throughput : Throughput
        The progress reports, for :attr:`samples_per_s`.
    batch : (int, int, int) or None
        ``(epoch_index, batch, n_batches)`` of the epoch in progress (0-based index).
    message : str
        Why the run ended, when it failed.
    notice : (str, str) or None
        ``(level, message)`` of the latest :class:`~scalekit.events.Notice` while it
        still holds: a warning (``recovering: ...``, ``waiting for workers``) is
        dropped once training goes on after it (a rank trains, a recovery or resize
        is reported, the run finishes).
    timeline : list of TimelineEntry
        Resizes, recoveries, checkpoints and failures (one entry per incident, a failed
        run) in the order they arrived; a rollback keeps them (they happened).
    last_checkpoint : CheckpointSaved or None
        The newest checkpoint saved (the event itself).
    recoveries, lost_steps, downtime_s : int, int, float
        Recoveries from failures; steps redone and seconds lost by them, in total.
    peak_gpu_memory : tuple of int
        Peak CUDA bytes per rank from the run's ``TrainingReport`` (empty without CUDA).
    n_batches : int or None
        Batches per epoch (the latest batch progress'), to place events in an epoch.
    sampling, n_shards, data_bytes, source : str, int, int, str
        From :class:`~scalekit.events.RunStarted`: ``"exact"`` or ``"sharded"``, and
        for sharded data the number of shards, their size in memory and the source in
        words.
    shards : dict of int to ShardProgress
        Each rank's latest progress through its shards (sharded data): only the newest
        generation's ranks, in the newest epoch they reported.
    version : int
        Grows each time ``rows`` changes (views redraw tables and charts only then).
    events_version : int
        Grows each time ``timeline``, ``world_sizes`` or ``max_epochs`` change.
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
    incidents: Incidents = dataclasses.field(default_factory=Incidents)
    throughput: Throughput = dataclasses.field(default_factory=Throughput)
    batch: tuple[int, int, int] | None = None
    message: str = ""
    notice: tuple[str, str] | None = None
    notice_time: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    timeline: list[TimelineEntry] = dataclasses.field(default_factory=list)
    last_checkpoint: CheckpointSaved | None = None
    recoveries: int = 0
    lost_steps: int = 0
    downtime_s: float = 0.0
    peak_gpu_memory: tuple[int, ...] = ()
    n_batches: int | None = None
    sampling: str = "exact"
    n_shards: int = 0
    data_bytes: int = 0
    source: str = ""
    shards: dict[int, ShardProgress] = dataclasses.field(default_factory=dict)
    version: int = 0
    events_version: int = 0
    numeric_keys: dict[str, None] = dataclasses.field(default_factory=dict)
    _incident_entries: dict[int, int] = dataclasses.field(default_factory=dict, repr=False)

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
            self._notice(event)
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
            self.throughput.progress(event)
            if event.n_batches > 0:
                self.n_batches = int(event.n_batches)
        elif isinstance(event, RankStatus):
            self._rank(event)
        elif isinstance(event, ShardProgress):
            self._shard_progress(event)
        elif isinstance(event, CheckpointSaved):
            self._begin(event.time)
            self.last_checkpoint = event
            self._note(checkpoint_entry(event))
        elif isinstance(event, Resized):
            self._begin(event.time)
            self._note(resize_entry(event))
            self._world(event.epoch + 1, event.new)  # the first epoch at the new size
            self.throughput.restart()  # the pause between the rounds is no training
            self._went_on(event.time)
        elif isinstance(event, Recovered):
            self._recovered(event)
        elif isinstance(event, RunFinished):
            self._finished(event)
        elif isinstance(event, TrainingReport):
            self.peak_gpu_memory = tuple(int(b) for b in event.peak_gpu_memory)
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
        self.sampling, self.n_shards = e.sampling, int(e.n_shards)
        self.data_bytes, self.source = int(e.data_bytes), e.source
        self.throughput.started(e)
        self.events_version += 1
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

    def _world(self, epoch: int, size: int | None) -> None:
        if size is None or size <= 0:
            return
        before = list(self.world_sizes)
        # a rollback forgets sizes recorded for the epochs that are redone
        while len(self.world_sizes) > 1 and self.world_sizes[-1][0] >= epoch:
            self.world_sizes.pop()
        if not self.world_sizes or self.world_sizes[-1][1] != size:
            self.world_sizes.append((int(epoch), int(size)))
        if self.world_sizes != before:
            self.events_version += 1

    def _rank(self, e: RankStatus) -> None:
        self._begin(e.time)
        info = RankInfo(rank=e.rank, worker=e.worker, state=e.state, generation=e.generation)
        self._incident(self.incidents.rank(e, self.position))
        if e.state == "training":
            self._went_on(e.time)
        if e.generation < self.generation:
            return  # a group that no longer exists
        if e.generation > self.generation:
            self.generation = e.generation
            self.ranks = {}
        self.ranks[e.rank] = info

    def _shard_progress(self, e: ShardProgress) -> None:
        self._begin(e.time)
        newest = max(((p.generation, p.epoch) for p in self.shards.values()), default=None)
        here = (e.generation, e.epoch)
        if newest is not None and here < newest:
            return  # a group that no longer exists, or an epoch that is over
        if newest is not None and here > newest:
            self.shards = {}  # a new epoch's deal (or a new group's): start afresh
        self.shards[e.rank] = e

    def _incident(self, incident: Incident | None) -> None:
        """One timeline entry per incident, redrawn in place as more ranks report."""
        if incident is None:
            return
        entry = failure_entry(incident.text, incident.epoch, incident.step, incident.time)
        index = self._incident_entries.get(incident.generation)
        if index is None:
            self._incident_entries[incident.generation] = len(self.timeline)
            self._note(entry)
        elif self.timeline[index] != entry:
            self.timeline[index] = entry
            self.events_version += 1

    def _notice(self, e: Notice) -> None:
        self.notice, self.notice_time = (e.level, e.message), e.time
        if self.run_id is not None:
            self._incident(self.incidents.notice(e.message, self.generation, self.position,
                                                 e.time))

    def _went_on(self, when: float) -> None:
        """Training goes on: a warning older than this no longer holds."""
        if self.notice is not None and self.notice[0] == "warning" and \
                self.notice_time <= when:
            self.notice = None

    def _recovered(self, e: Recovered) -> None:
        self._begin(e.time)
        self.incidents.resolve()
        self.throughput.restart()
        self._went_on(e.time)
        self.recoveries += 1
        self.lost_steps += max(int(e.lost_steps), 0)
        self.downtime_s += max(float(e.downtime_s), 0.0)
        self._note(recovery_entry(e))
        # later rows are re-run: drop them, as a repeated EpochEnded does
        kept = [r for r in self.rows if r["epoch"] <= e.epoch]
        if len(kept) != len(self.rows):
            self.rows = kept
            self.version += 1
        self.batch = None  # the epoch in progress was lost
        self._world(e.epoch + 1, e.world_size)

    def _finished(self, e: RunFinished) -> None:
        self._begin(e.time)
        if e.status == "failed":
            first = e.message.splitlines()[0] if e.message else ""
            self._note(failure_entry(f"run failed: {first}" if first else "run failed",
                                     *self.position, e.time))
        self.status, self.message = e.status, e.message
        self.finished_at, self.batch = e.time, None
        if e.status == "finished":
            self.incidents.resolve()
            self._went_on(e.time)

    def _note(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        self.events_version += 1

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
    def samples_per_s(self) -> float | None:
        """The throughput shown (:mod:`scalekit.views.throughput`): over the last
        seconds of progress while running, over the whole run once it is over."""
        if self.running:
            return self.throughput.rate
        return self.throughput.overall(self.epochs_done - self.start_epoch, self.elapsed_s())

    @property
    def throughput_text(self) -> str:
        """:attr:`samples_per_s` in words that say what it measures."""
        return throughput_text(self.throughput, running=self.running,
                               epochs_trained=self.epochs_done - self.start_epoch,
                               elapsed_s=self.elapsed_s())

    def rank_state(self, info: RankInfo) -> str:
        """What a rank chip says: a rank that only stopped with a failed peer is
        ``aborted``, not ``failed``."""
        return self.incidents.state_of(info)

    @property
    def position(self) -> tuple[int, int]:
        """``(epochs completed, batches into the next epoch)`` as far as known."""
        if self.batch is not None and self.batch[0] >= self.epochs_done:
            return int(self.batch[0]), int(self.batch[1])
        return self.epochs_done, 0

    def world_size_at(self, epoch: int) -> int | None:
        """The number of ranks that trained (or train) the 1-based ``epoch``."""
        size = self.world_sizes[0][1] if self.world_sizes else None
        for first, n in self.world_sizes:
            if first <= epoch:
                size = n
        return size

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
