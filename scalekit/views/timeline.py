"""The pieces of a run's timeline: entries and their texts.

:class:`~scalekit.views.training_state.TrainingState` folds
:class:`~scalekit.events.Resized`, :class:`~scalekit.events.Recovered`,
:class:`~scalekit.events.CheckpointSaved` and failures into :class:`TimelineEntry`
values built here; the renderers of :mod:`scalekit.views.timeline_render` draw them.
Pure data and text: no ipywidgets, no HTML. The last checkpoint is the
:class:`~scalekit.events.CheckpointSaved` event itself: one record of it, not a copy.

Epochs and steps follow the checkpoint convention: ``epoch`` counts the epochs
*completed*, ``step`` the batches completed in the next one (0 at an epoch boundary).
"""

from __future__ import annotations

import dataclasses

from scalekit.events import CheckpointSaved, Recovered, Resized
from scalekit.views.fmt import fmt_bytes, fmt_seconds, plural

__all__ = [
    "KINDS",
    "TimelineEntry",
    "checkpoint_entry",
    "failure_entry",
    "recovery_entry",
    "resize_entry",
]

KINDS = ("resize", "recovery", "checkpoint", "failure")


@dataclasses.dataclass(frozen=True)
class TimelineEntry:
    """Something that happened to the run, for the timeline.

    Attributes
    ----------
    kind : str
        ``resize``, ``recovery``, ``checkpoint`` or ``failure``.
    epoch, step : int
        Where training stood: epochs completed, batches into the next epoch.
    text : str
        What happened, one line (no epoch: the views add it).
    time : float
        The event's timestamp (``time.time()`` seconds).
    world_size : int or None
        The number of ranks from then on (resizes and recoveries).
    """

    kind: str
    epoch: int
    step: int
    text: str
    time: float
    world_size: int | None = None


def resize_entry(e: Resized) -> TimelineEntry:
    """``world size 2 → 3 · workers joined``."""
    text = f"world size {e.old} → {e.new}" + (f" · {e.reason}" if e.reason else "")
    return TimelineEntry("resize", int(e.epoch), 0, text, e.time, int(e.new))


def recovery_entry(e: Recovered) -> TimelineEntry:
    """``recovered on 2 ranks · lost 40 steps · down 4.0 s · why`` (from epoch/step)."""
    text = "recovered"
    if e.world_size > 0:
        text += f" on {plural(e.world_size, 'rank')}"
    text += f" · lost {plural(e.lost_steps, 'step')} · down {fmt_seconds(e.downtime_s)}"
    if e.reason:
        text += f" · {e.reason}"
    size = int(e.world_size) if e.world_size > 0 else None
    return TimelineEntry("recovery", int(e.epoch), int(e.step), text, e.time, size)


def checkpoint_entry(e: CheckpointSaved) -> TimelineEntry:
    """``checkpoint saved in 12 ms (1.5 MiB)``."""
    text = f"checkpoint saved in {fmt_seconds(e.seconds)}"
    if e.nbytes:
        text += f" ({fmt_bytes(e.nbytes)})"
    return TimelineEntry("checkpoint", int(e.epoch), int(e.step), text, e.time)


def failure_entry(text: str, epoch: int, step: int, when: float) -> TimelineEntry:
    """A failed rank or a failed run."""
    return TimelineEntry("failure", int(epoch), int(step), text, when)
