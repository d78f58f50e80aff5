"""The pieces of a run's timeline: entries, the last checkpoint and their texts.

:class:`~scalekit.widgets.training_state.TrainingState` folds
:class:`~scalekit.events.Resized`, :class:`~scalekit.events.Recovered`,
:class:`~scalekit.events.CheckpointSaved` and failures into :class:`TimelineEntry`
values built here; the renderers of :mod:`scalekit.widgets.timeline_render` draw them.
Pure data and text: no ipywidgets, no HTML.

Epochs and steps follow the checkpoint convention: ``epoch`` counts the epochs
*completed*, ``step`` the batches completed in the next one (0 at an epoch boundary).
"""

from __future__ import annotations

import dataclasses

from scalekit.events import CheckpointSaved, Recovered, Resized

__all__ = [
    "KINDS",
    "CheckpointInfo",
    "TimelineEntry",
    "checkpoint_entry",
    "failure_entry",
    "fmt_bytes",
    "fmt_seconds",
    "plural",
    "recovery_entry",
    "resize_entry",
    "where",
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


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """The newest :class:`~scalekit.events.CheckpointSaved` of a run."""

    epoch: int
    step: int
    url: str
    seconds: float
    nbytes: int = 0
    time: float = 0.0


def fmt_seconds(seconds: float | None) -> str:
    """``"12 ms"``, ``"3.4 s"``, ``"2m 05s"``, ``"1h 02m"``; ``"–"`` when unknown."""
    if seconds is None:
        return "–"
    s = max(float(seconds), 0.0)
    if s < 1.0:
        return f"{s * 1000:.0f} ms"
    if s < 60.0:
        return f"{s:.1f} s"
    whole = int(round(s))
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def fmt_bytes(nbytes: int) -> str:
    """``"512 B"``, ``"3.2 KiB"``, ``"1.5 MiB"``, ``"2.0 GiB"``."""
    size = float(max(nbytes, 0))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024.0 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    raise AssertionError("unreachable")


def plural(n: int, word: str) -> str:
    """``"1 step"``, ``"40 steps"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def where(epoch: int, step: int) -> str:
    """``"epoch 3"`` at a boundary, ``"epoch 3 (step 12)"`` inside the next epoch."""
    return f"epoch {epoch}" + (f" (step {step})" if step else "")


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
