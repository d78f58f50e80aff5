"""Pure renderers for a run's timeline: world-size chart, checkpoint and recovery lines.

They draw the timeline part of a
:class:`~scalekit.views.training_state.TrainingState` (resizes, failures, recoveries,
checkpoints); :mod:`scalekit.views.training_render` puts them into the whole run's
text and HTML, the live panel into its ``events_html`` widget. No ipywidgets here;
every value reaching HTML is escaped.

Positions on the x axis are in epochs: an event at ``epoch`` (completed) and ``step``
sits at ``epoch + step / batches per epoch`` when the batches per epoch are known.

The event list folds repeats: consecutive entries of a routine kind (each epoch's
checkpoint) make one line that counts them, and the kinds that tell the run's story
(:data:`IMPORTANT`: failures, recoveries, resizes) are always listed, however many
routine lines are left out for room.
"""

from __future__ import annotations

import dataclasses

from scalekit.views.charts import Marker, step_chart_svg
from scalekit.views.fmt import fmt_clock, fmt_seconds, plural, where
from scalekit.views.html import CPU_COLOR, DANGER_COLOR, MEMORY_COLOR, WARN_COLOR, escape
from scalekit.views.timeline import TimelineEntry
from scalekit.views.training_state import TrainingState

__all__ = [
    "IMPORTANT",
    "epoch_axis",
    "MAX_TIMELINE",
    "TimelineLine",
    "checkpoint_text",
    "events_html",
    "events_lines",
    "recoveries_text",
    "timeline_html",
    "timeline_lines",
    "world_chart_svg",
]

MAX_TIMELINE = 8  # lines of routine entries; important ones always add theirs
IMPORTANT = frozenset({"failure", "recovery", "resize"})
KIND_COLORS = {"resize": CPU_COLOR, "recovery": DANGER_COLOR, "checkpoint": MEMORY_COLOR,
               "failure": DANGER_COLOR}


# --- text ------------------------------------------------------------------------------


def checkpoint_text(state: TrainingState) -> str:
    """``"last checkpoint: after epoch 4 · saved 12:03:04 in 12 ms · <url>"``; ``""``
    before the first (a time of day, not an age: the text never goes stale)."""
    c = state.last_checkpoint
    if c is None:
        return ""
    return (f"last checkpoint: {where(c.epoch, c.step)} · saved {fmt_clock(c.time)} in "
            f"{fmt_seconds(c.seconds)} · {c.url}")


def recoveries_text(state: TrainingState) -> str:
    """``"recoveries: 2 · downtime 14.5 s · lost 40 steps"``; ``""`` without any."""
    if not state.recoveries:
        return ""
    return (f"recoveries: {state.recoveries} · downtime {fmt_seconds(state.downtime_s)} · "
            f"lost {plural(state.lost_steps, 'step')}")


@dataclasses.dataclass(frozen=True)
class TimelineLine:
    """One line of the event list: an entry, or a run of routine entries folded.

    Attributes
    ----------
    kind : str
        The entries' kind.
    entries : tuple of TimelineEntry
        Oldest first; more than one for a folded run of repeats.
    """

    kind: str
    entries: tuple[TimelineEntry, ...]

    @property
    def newest(self) -> TimelineEntry:
        return self.entries[-1]

    @property
    def text(self) -> str:
        """``"after epoch 18 · checkpoint saved in 12 ms · 18 saved, epochs 1–18"``."""
        e = self.newest
        text = f"{where(e.epoch, e.step)} · {e.text}"
        if len(self.entries) > 1:
            first = self.entries[0].epoch
            text += f" · {len(self.entries)} saved, epochs {first}–{e.epoch}" \
                if self.kind == "checkpoint" else f" · {len(self.entries)} times"
        return text


def _fold(entries: list[TimelineEntry]) -> list[TimelineLine]:
    """Consecutive routine entries of one kind become one line (oldest first)."""
    lines: list[TimelineLine] = []
    for e in entries:
        last = lines[-1] if lines else None
        if last is not None and last.kind == e.kind and e.kind not in IMPORTANT:
            lines[-1] = TimelineLine(e.kind, (*last.entries, e))
        else:
            lines.append(TimelineLine(e.kind, (e,)))
    return lines


def timeline_view(state: TrainingState, limit: int = MAX_TIMELINE
                  ) -> tuple[list[TimelineLine], int]:
    """The lines to list, newest first, and how many routine lines are left out.

    Every important line is kept; routine lines fill up to ``limit`` lines in all,
    newest first.
    """
    lines = _fold(state.timeline)[::-1]
    room = max(limit - sum(line.kind in IMPORTANT for line in lines), 0)
    shown: list[TimelineLine] = []
    left_out = 0
    for line in lines:
        if line.kind in IMPORTANT or room > 0:
            shown.append(line)
            room -= line.kind not in IMPORTANT
        else:
            left_out += 1
    return shown, left_out


def _left_out(n: int) -> str:
    return f"… {plural(n, 'earlier routine line')} (checkpoints)"


def timeline_lines(state: TrainingState, limit: int = MAX_TIMELINE) -> list[str]:
    """One line per entry (repeats folded), newest first:
    ``"12:03:04  resize      after epoch 2 · world size 2 → 3"``."""
    shown, left_out = timeline_view(state, limit)
    lines = [f"{fmt_clock(line.newest.time)}  {line.kind:<10}  {line.text}" for line in shown]
    if left_out:
        lines.append(_left_out(left_out))
    return lines


def events_lines(state: TrainingState) -> list[str]:
    """Checkpoint, recoveries and timeline lines for the plain-text view."""
    lines = [text for text in (checkpoint_text(state), recoveries_text(state)) if text]
    if state.timeline:
        lines.append("timeline (newest first):")
        lines += [f"  {line}" for line in timeline_lines(state)]
    return lines


# --- world size chart ----------------------------------------------------------------


def _x(state: TrainingState, epoch: int, step: int) -> float:
    n = state.n_batches
    return epoch + (min(step / n, 1.0) if n and step > 0 else 0.0)


def _markers(state: TrainingState) -> list[Marker]:
    markers = []
    for e in state.timeline:
        label = f"{where(e.epoch, e.step)}: {e.text}"
        x = _x(state, e.epoch, e.step)
        if e.kind == "checkpoint":
            markers.append(Marker(x, 0.0, MEMORY_COLOR, e.kind, label, tick=True))
        elif e.kind in ("resize", "recovery"):
            size = e.world_size or state.world_size_at(e.epoch + 1) or 0
            markers.append(Marker(x, float(size), KIND_COLORS[e.kind], e.kind, label))
    return markers


def _steps(state: TrainingState) -> list[tuple[float, float]]:
    x0 = float(state.start_epoch)
    return [(x0 if i == 0 else max(float(e - 1), x0), float(n))
            for i, (e, n) in enumerate(state.world_sizes)]


def epoch_axis(state: TrainingState) -> tuple[float, float]:
    """The x axis of the run's charts, in epochs completed: from the start epoch to
    ``max_epochs`` (or as far as the run or an event got). The loss chart uses it too,
    so it shares the world-size chart's axis instead of growing epoch by epoch."""
    x0 = float(state.start_epoch)
    return x0, max([float(state.max_epochs or 0), float(state.epochs_done), x0 + 1.0,
                    *(x for x, _ in _steps(state)), *(m.x for m in _markers(state))])


def world_chart_svg(state: TrainingState, width: int = 360, height: int = 100) -> str:
    """The world size over epochs as a step chart (class ``scalekit-world-chart``).

    Resizes are blue dots, recoveries red dots (at the new size), checkpoints green
    ticks on the x axis; each has its description as a tooltip. The line runs up to the
    last finished epoch, dashed on to ``max_epochs`` while the run goes on. Its x axis
    is :func:`epoch_axis`, the loss chart's.
    """
    steps = _steps(state)
    markers = _markers(state)
    progress = float(state.epochs_done)  # redrawn per epoch, not per batch
    x0, x1 = epoch_axis(state)
    return step_chart_svg(
        steps, (x0, x1), markers, width, height, solid_until=progress,
        planned=state.status in ("waiting", "running"), title="world size over epochs",
        css_class="scalekit-world-chart",
    )


# --- HTML ------------------------------------------------------------------------------


def timeline_html(state: TrainingState, limit: int = MAX_TIMELINE) -> str:
    """The event list (class ``scalekit-timeline``), newest first, repeats folded."""
    if not state.timeline:
        return ""
    shown, left_out = timeline_view(state, limit)
    items = []
    for line in shown:
        color = KIND_COLORS.get(line.kind, "inherit")
        folded = " scalekit-timeline-folded" if len(line.entries) > 1 else ""
        items.append(
            f'<li class="scalekit-timeline-entry scalekit-timeline-{escape(line.kind)}'
            f'{folded}"><span style="color:#888">{fmt_clock(line.newest.time)}</span> '
            f'<span style="color:{color}">● {escape(line.kind)}</span> '
            f"{escape(line.text)}</li>"
        )
    if left_out:
        items.append(f'<li style="color:#888">{escape(_left_out(left_out))}</li>')
    return ('<ul class="scalekit-timeline" style="list-style:none;margin:0.2em 0;'
            f'padding:0;font-size:0.85em">{"".join(items)}</ul>')


def events_html(state: TrainingState) -> str:
    """Chart, checkpoint line, recoveries line and timeline (class
    ``scalekit-training-events``); ``""`` before the run's world size is known."""
    if not state.world_sizes and not state.timeline:
        return ""
    parts = [world_chart_svg(state)]
    checkpoint = checkpoint_text(state)
    if checkpoint:
        parts.append(f'<div class="scalekit-checkpoint-line" style="font-size:0.85em">'
                     f"{escape(checkpoint)}</div>")
    recoveries = recoveries_text(state)
    if recoveries:
        # orange, not red: the fit went on (the failure itself is in the list below)
        parts.append(f'<div class="scalekit-recoveries-line" style="font-size:0.85em;'
                     f'color:{WARN_COLOR}">{escape(recoveries)}</div>')
    parts.append(timeline_html(state))
    return (f'<div class="scalekit-training-events" style="margin-top:0.3em">'
            f'{"".join(parts)}</div>')
