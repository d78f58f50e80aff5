"""Pure renderers for a run's timeline: world-size chart, checkpoint and recovery lines.

They draw the timeline part of a
:class:`~scalekit.views.training_state.TrainingState` (resizes, failures, recoveries,
checkpoints); :mod:`scalekit.views.training_render` puts them into the whole run's
text and HTML, the live panel into its ``events_html`` widget. No ipywidgets here;
every value reaching HTML is escaped.

Positions on the x axis are in epochs: an event at ``epoch`` (completed) and ``step``
sits at ``epoch + step / batches per epoch`` when the batches per epoch are known.
"""

from __future__ import annotations

import time

from scalekit.views.charts import Marker, step_chart_svg
from scalekit.views.fmt import fmt_seconds, plural, where
from scalekit.views.html import CPU_COLOR, DANGER_COLOR, MEMORY_COLOR, escape
from scalekit.views.timeline import TimelineEntry
from scalekit.views.training_state import TrainingState

__all__ = [
    "MAX_TIMELINE",
    "checkpoint_text",
    "events_html",
    "events_lines",
    "recoveries_text",
    "timeline_html",
    "timeline_lines",
    "world_chart_svg",
]

MAX_TIMELINE = 8
KIND_COLORS = {"resize": CPU_COLOR, "recovery": DANGER_COLOR, "checkpoint": MEMORY_COLOR,
               "failure": DANGER_COLOR}


# --- text ------------------------------------------------------------------------------


def checkpoint_text(state: TrainingState) -> str:
    """``"last checkpoint: epoch 4 (step 0) · 12 ms · <url>"``; ``""`` before the first."""
    c = state.last_checkpoint
    if c is None:
        return ""
    return f"last checkpoint: epoch {c.epoch} (step {c.step}) · {fmt_seconds(c.seconds)} · {c.url}"


def recoveries_text(state: TrainingState) -> str:
    """``"recoveries: 2 · downtime 14.5 s · lost 40 steps"``; ``""`` without any."""
    if not state.recoveries:
        return ""
    return (f"recoveries: {state.recoveries} · downtime {fmt_seconds(state.downtime_s)} · "
            f"lost {plural(state.lost_steps, 'step')}")


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _newest(state: TrainingState, limit: int) -> tuple[list[TimelineEntry], int]:
    """The newest ``limit`` entries, newest first, and how many older ones are left out."""
    shown = state.timeline[::-1][:limit]
    return shown, len(state.timeline) - len(shown)


def timeline_lines(state: TrainingState, limit: int = MAX_TIMELINE) -> list[str]:
    """One line per entry, newest first: ``"12:03:04  resize      epoch 2 · world size 2 → 3"``."""
    shown, older = _newest(state, limit)
    lines = [f"{_clock(e.time)}  {e.kind:<10}  {where(e.epoch, e.step)} · {e.text}"
             for e in shown]
    if older:
        lines.append(f"… {plural(older, 'earlier event')}")
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


def world_chart_svg(state: TrainingState, width: int = 360, height: int = 100) -> str:
    """The world size over epochs as a step chart (class ``scalekit-world-chart``).

    Resizes are blue dots, recoveries red dots (at the new size), checkpoints green
    ticks on the x axis; each has its description as a tooltip. The line runs up to the
    last finished epoch, dashed on to ``max_epochs`` while the run goes on.
    """
    x0 = float(state.start_epoch)
    steps = [(x0 if i == 0 else max(float(e - 1), x0), float(n))
             for i, (e, n) in enumerate(state.world_sizes)]
    markers = _markers(state)
    progress = float(state.epochs_done)  # redrawn per epoch, not per batch
    x1 = max([float(state.max_epochs or 0), progress, x0 + 1.0,
              *(x for x, _ in steps), *(m.x for m in markers)])
    return step_chart_svg(
        steps, (x0, x1), markers, width, height, solid_until=progress,
        planned=state.status in ("waiting", "running"), title="world size over epochs",
        css_class="scalekit-world-chart",
    )


# --- HTML ------------------------------------------------------------------------------


def timeline_html(state: TrainingState, limit: int = MAX_TIMELINE) -> str:
    """The newest entries as a compact list (class ``scalekit-timeline``), newest first."""
    if not state.timeline:
        return ""
    shown, older = _newest(state, limit)
    items = []
    for e in shown:
        color = KIND_COLORS.get(e.kind, "inherit")
        items.append(
            f'<li class="scalekit-timeline-entry scalekit-timeline-{escape(e.kind)}">'
            f'<span style="color:#888">{_clock(e.time)}</span> '
            f'<span style="color:{color}">● {escape(e.kind)}</span> '
            f"{escape(where(e.epoch, e.step))} · {escape(e.text)}</li>"
        )
    if older:
        items.append(f'<li style="color:#888">… {plural(older, "earlier event")}</li>')
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
        parts.append(f'<div class="scalekit-recoveries-line" style="font-size:0.85em;'
                     f'color:{DANGER_COLOR}">{escape(recoveries)}</div>')
    parts.append(timeline_html(state))
    return (f'<div class="scalekit-training-events" style="margin-top:0.3em">'
            f'{"".join(parts)}</div>')
