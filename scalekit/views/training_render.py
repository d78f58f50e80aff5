"""Pure renderers for a training run: text, HTML pieces and the whole HTML block.

Everything here draws a :class:`~scalekit.views.training_state.TrainingState` (the
timeline's pieces, world-size chart, checkpoint and recovery lines, come from
:mod:`scalekit.views.timeline_render`); the live
:class:`~scalekit.widgets.training_panel.TrainingPanel` puts the pieces into its
widgets, :func:`training_html` / :func:`training_text` put them together for the
fallbacks and ``repr(run)``. No ipywidgets here; every value reaching HTML is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable

from scalekit.events import Event, ShardProgress
from scalekit.views.charts import line_chart_svg
from scalekit.views.fmt import fmt_bytes, fmt_duration, fmt_value, plural
from scalekit.views.html import (
    CPU_COLOR,
    DANGER_COLOR,
    MEMORY_COLOR,
    WARN_COLOR,
    escape,
    notice_html,
    percent_bar,
)
from scalekit.views.timeline_render import epoch_axis, events_html, events_lines
from scalekit.views.training_state import TrainingState

__all__ = [
    "LOSS_SCALES",
    "TABLE_ROWS",
    "batch_text",
    "charts_html",
    "data_html",
    "data_lines",
    "data_text",
    "epoch_table_html",
    "epoch_text",
    "events_html",
    "gpu_memory_text",
    "rank_chips_html",
    "state_html",
    "state_text",
    "stats_text",
    "status_html",
    "training_html",
    "training_text",
    "use_log_scale",
    "world_text",
]

RANK_COLORS = {
    "rendezvous": WARN_COLOR, "training": CPU_COLOR, "done": MEMORY_COLOR,
    "failed": DANGER_COLOR, "aborted": "#999",
}
STATUS_COLORS = {"finished": MEMORY_COLOR, "failed": DANGER_COLOR, "cancelled": WARN_COLOR}
LOSS_COLORS = {"train_loss": "#1f77b4", "valid_loss": "#ff7f0e"}
MAX_TABLE_ROWS = 100  # the whole log, expanded, up to this many rows
TABLE_ROWS = 5  # the last epochs shown before the log is expanded
LOSS_SCALES = ("auto", "linear", "log")
BEST_STYLE = "font-weight:bold;color:#2ca02c"
CELL_STYLE = "text-align:right;padding:0 0.6em"


# --- text pieces -----------------------------------------------------------------------


def epoch_text(state: TrainingState) -> str:
    """``"epoch 3/20 · ETA 1m 05s"`` (ETA while running, elapsed time at the end)."""
    total = state.max_epochs if state.max_epochs is not None else "?"
    text = f"epoch {state.epochs_done}/{total}"
    if state.running and state.eta_s is not None:
        text += f" · ETA {fmt_duration(state.eta_s)}"
    elif not state.running and state.finished_at is not None:
        text += f" · took {fmt_duration(state.elapsed_s())}"
    return text


def batch_text(state: TrainingState) -> str:
    """``"epoch 4: batch 12/40"`` for the epoch in progress, else ``""``."""
    if state.batch is None or not state.running or state.batch[0] < state.epochs_done:
        return ""
    epoch_index, batch, n_batches = state.batch
    return f"epoch {epoch_index + 1}: batch {batch}/{n_batches}"


def world_text(state: TrainingState) -> str:
    """``"world size 3 (2 → 3 after epoch 18)"``: a change is placed after the last
    epoch trained at the old size, as the timeline and ``Resized.epoch`` place it."""
    if state.world_size is None:
        return "world size –"
    text = f"world size {state.world_size}"
    changes = state.world_size_changes
    if changes:
        text += " (" + ", ".join(f"{a} → {b} after epoch {e - 1}" for e, a, b in changes) + ")"
    return text


def gpu_memory_text(state: TrainingState) -> str:
    """``"peak GPU memory per rank 3.41, 3.52 GiB"`` once a CUDA run reported it, else ``""``."""
    if not state.peak_gpu_memory:
        return ""
    return "peak GPU memory per rank " + ", ".join(
        f"{b / 2**30:.2f}" for b in state.peak_gpu_memory) + " GiB"


def stats_text(state: TrainingState) -> str:
    """Throughput (saying what it measures) and world size on one line (and peak GPU
    memory after a CUDA run)."""
    text = f"{state.throughput_text} · {world_text(state)}"
    gpu = gpu_memory_text(state)
    return f"{text} · {gpu}" if gpu else text


def data_text(state: TrainingState) -> str:
    """``"data: sharded · 80 shards, 954.0 MiB"`` on sharded data, else ``""``."""
    if state.sampling != "sharded":
        return ""
    text = f"data: sharded · {state.n_shards} shards"
    if state.data_bytes:
        text += f", {fmt_bytes(state.data_bytes)}"
    return text


def _rank_data(p: ShardProgress) -> str:
    text = f"rank {p.rank}: {p.shards_done}/{p.shards_total} shards"
    if p.rows_total:
        text += f" ({p.rows_done:,}/{p.rows_total:,} rows)"
    return text + f", epoch {p.epoch + 1}"


def data_lines(state: TrainingState) -> list[str]:
    """The data line and one line per rank: shards done/total of its deal this epoch."""
    head = data_text(state)
    if not head:
        return []
    return [head, *(f"  {_rank_data(p)} · {fmt_bytes(p.buffered)} buffered"
                    for _, p in sorted(state.shards.items()))]


def _headline(state: TrainingState) -> str:
    return f"scalekit training · run {state.run_id or '?'} · {state.status}"


def _status_lines(state: TrainingState) -> list[str]:
    lines: list[str] = []
    if state.status in ("failed", "cancelled") and state.message:
        first, *rest = state.message.splitlines()
        lines.append(f"{state.status}: {first}")
        lines += [f"    {line}" for line in rest]
    lines += [incident.text for incident in state.incidents.open]
    if state.notice is not None:
        lines.append(f"[{state.notice[0]}] {state.notice[1]}")
    return lines


def table_text(state: TrainingState) -> list[str]:
    """The epoch log as skorch prints it; best values carry a trailing ``*``."""
    keys = state.table_keys
    cells = [
        [fmt_value(row.get(k), k) + ("*" if state.is_best(row, k) else "") for k in keys]
        for row in state.rows
    ]
    widths = [max(len(k), *(len(r[i]) for r in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    if any(state.is_best(row, k) for row in state.rows for k in keys):
        lines.append("(* best so far)")
    return lines


def state_text(state: TrainingState) -> str:
    """The whole run as plain text (what ``repr(run)`` shows)."""
    lines = [_headline(state), f"  {epoch_text(state)}"]
    batch = batch_text(state)
    if batch:
        lines[-1] += f" · {batch}"
    lines.append(f"  {stats_text(state)}")
    if state.ranks:
        ranks = ", ".join(f"{r.rank} {r.state}" for _, r in sorted(state.ranks.items()))
        lines.append(f"  ranks: {ranks}")
    lines += [f"  {line}" for line in data_lines(state)]
    lines += [f"  {line}" for line in _status_lines(state)]
    lines += [f"  {line}" for line in events_lines(state)]
    if state.rows:
        lines += ["", *table_text(state)]
    return "\n".join(lines)


# --- HTML pieces -----------------------------------------------------------------------


def rank_chips_html(state: TrainingState) -> str:
    """One coloured chip per rank of the current group, titled with its worker; a rank
    that only stopped because a peer failed says ``aborted`` (grey), not ``failed``."""
    chips = "".join(
        f'<span class="scalekit-rank scalekit-rank-{escape(st)}" '
        f'title="{escape(r.worker)} · generation {r.generation}" style="display:inline-block;'
        f"margin:0 0.3em 0.2em 0;padding:0 0.5em;border-radius:0.8em;font-size:0.85em;"
        f'color:#fff;background:{RANK_COLORS.get(st, "#888")}">'
        f"rank {r.rank} · {escape(st)}</span>"
        for r, st in ((r, state.rank_state(r)) for _, r in sorted(state.ranks.items()))
    )
    return f'<div class="scalekit-rank-chips">{chips}</div>' if chips else ""


def data_html(state: TrainingState) -> str:
    """Sharded data: the source in a line, then a bar per rank filled to the share of
    its rows of the epoch trained on, labelled with its shards done/total."""
    head = data_text(state)
    if not head:
        return ""
    title = f' title="{escape(state.source)}"' if state.source else ""
    bars = "".join(
        f'<div class="scalekit-rank-data" title="{escape(p.worker)} · '
        f'{escape(fmt_bytes(p.bytes_read))} read in {p.read_s:.1f}s · '
        f'{escape(fmt_bytes(p.buffered))} buffered">'
        + percent_bar(p.fraction, _rank_data(p), color=MEMORY_COLOR, width="22em")
        + "</div>"
        for _, p in sorted(state.shards.items())
    )
    return (f'<div class="scalekit-data"><div{title}>{escape(head)}</div>{bars}</div>')


def use_log_scale(state: TrainingState, scale: str = "auto") -> bool:
    """Whether the loss chart is logarithmic: ``"log"``, ``"linear"``, or ``"auto"``:
    log once the losses span a factor of 10 or more (on a linear axis every epoch after
    the first few would sit on the baseline)."""
    if scale != "auto":
        return scale == "log"
    values = [v for k in state.loss_keys for v in state.series(k) if v is not None]
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) >= 10 * min(positive)


def charts_html(state: TrainingState, scale: str = "auto") -> str:
    """The loss chart and, when the rows hold other scores, a smaller score chart.

    The loss chart has the world-size chart's x axis (:func:`~scalekit.views.
    timeline_render.epoch_axis`, same width): drawn above it, epochs line up, and the
    world-size chart below labels them. ``scale`` is ``auto``, ``linear`` or ``log``.
    """
    if not state.rows:
        return ""
    x_start = int(state.rows[0]["epoch"])
    axis = epoch_axis(state)
    charts = [line_chart_svg(
        {k: state.series(k) for k in state.loss_keys}, colors=LOSS_COLORS,
        x_start=x_start, x_range=axis, log=use_log_scale(state, scale),
        css_class="scalekit-loss-chart", x_labels=False,
    )]
    scores = {k: state.series(k) for k in state.score_keys}
    if scores:
        values = [v for vs in scores.values() for v in vs if v is not None]
        unit = all(0.0 <= v <= 1.0 for v in values)
        charts.append(line_chart_svg(
            scores, width=260, y_range=(0.0, 1.0) if unit else None, x_start=x_start,
            x_range=axis, css_class="scalekit-score-chart",
        ))
    return ('<div class="scalekit-charts" style="display:flex;gap:0.5em;flex-wrap:wrap">'
            f'{"".join(charts)}</div>')


def epoch_table_html(state: TrainingState, max_rows: int | None = TABLE_ROWS, *,
                     expander: bool = True) -> str:
    """The epoch log (skorch's columns); best values bold green with class ``scalekit-best``.

    Parameters
    ----------
    state : TrainingState
        The run.
    max_rows : int or None
        The last rows shown (``None``: all, up to :data:`MAX_TABLE_ROWS`): a 60-epoch
        fit must not make the panel screens tall.
    expander : bool
        Below a shortened table, a ``<details>`` with the whole log (class
        ``scalekit-epoch-more``): the static HTML's expander. The live panel has a
        button instead and passes ``False``.
    """
    if not state.rows:
        return ""
    short = _table(state, max_rows if max_rows is not None else MAX_TABLE_ROWS)
    if not expander or max_rows is None or len(state.rows) <= max_rows:
        return short
    return (f'{short}<details class="scalekit-epoch-more"><summary style="cursor:pointer;'
            f'font-size:0.85em;color:#555">all {plural(len(state.rows), "epoch")}</summary>'
            f"{_table(state, MAX_TABLE_ROWS)}</details>")


def _table(state: TrainingState, max_rows: int) -> str:
    keys = state.table_keys
    head = "".join(f'<th style="{CELL_STYLE}">{escape(k)}</th>' for k in keys)
    rows = state.rows[-max_rows:]
    body = []
    if len(state.rows) > len(rows):
        body.append(f'<tr><td colspan="{len(keys)}" style="text-align:left;color:#888">'
                    f"… {len(state.rows) - len(rows)} earlier epochs</td></tr>")
    for row in rows:
        cells = []
        for k in keys:
            text = escape(fmt_value(row.get(k), k))
            if state.is_best(row, k):
                cells.append(f'<td class="scalekit-best" title="best so far" '
                             f'style="{CELL_STYLE};{BEST_STYLE}">{text}</td>')
            else:
                cells.append(f'<td style="{CELL_STYLE}">{text}</td>')
        body.append(f'<tr class="scalekit-epoch-row">{"".join(cells)}</tr>')
    return (
        '<table class="scalekit-epoch-table" style="border-collapse:collapse;'
        'font-size:0.85em;font-family:monospace;line-height:1.35">'
        f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def status_html(state: TrainingState) -> str:
    """The run's outcome (with a failure's full message folded away) and the notice."""
    color = STATUS_COLORS.get(state.status, "inherit")
    parts = []
    if state.status in ("failed", "cancelled") and state.message:
        first, *rest = state.message.splitlines()
        parts.append(f'<div style="color:{color};font-weight:bold">'
                     f"{escape(state.status)}: {escape(first)}</div>")
        if rest:
            parts.append('<details><summary>details</summary><pre style="font-size:0.8em;'
                         f'white-space:pre-wrap">{escape(chr(10).join(rest))}</pre></details>')
    else:
        text = state.status if state.status != "waiting" else "waiting for the run to start"
        if state.status == "finished":
            text += f" · {state.epochs_done} epochs in {fmt_duration(state.elapsed_s())}"
        parts.append(f'<div style="color:{color}">{escape(text)}</div>')
    for incident in state.incidents.open:  # a recovered one is in the timeline
        parts.append(f'<div class="scalekit-incident" style="color:{DANGER_COLOR}">'
                     f"{escape(incident.text)}</div>")
    if state.notice is not None:
        parts.append(notice_html(*state.notice))
    return "".join(parts)


def _bar_color(state: TrainingState) -> str:
    return STATUS_COLORS.get(state.status, CPU_COLOR)


def state_html(state: TrainingState) -> str:
    """The whole run as one self-contained HTML block (no widget manager needed)."""
    total = state.max_epochs or 0
    fraction = state.epochs_done / total if total else 0.0
    parts = [
        f"<div><b>scalekit training</b> · run <code>{escape(state.run_id or '?')}</code> · "
        f"{escape(state.status)}</div>",
        '<div class="scalekit-epoch-progress">' + percent_bar(
            min(fraction, 1.0), epoch_text(state), color=_bar_color(state), width="22em"
        ) + "</div>",
    ]
    batch = batch_text(state)
    if batch:
        parts.append(f'<div class="scalekit-batch-progress">'
                     f"{percent_bar(state.batch_fraction, batch, width='22em')}</div>")
    parts.append(f'<div class="scalekit-training-stats">{escape(stats_text(state))}</div>')
    parts += [rank_chips_html(state), data_html(state), charts_html(state),
              events_html(state), epoch_table_html(state)]
    parts.append(f'<div class="scalekit-training-status">{status_html(state)}</div>')
    return f'<div class="scalekit-training">{"".join(parts)}</div>'


# --- whole run from events or a state ---------------------------------------------------


def _as_state(events: Iterable[Event] | TrainingState) -> TrainingState:
    if isinstance(events, TrainingState):
        return events
    return TrainingState.from_events(events)


def training_text(events: Iterable[Event] | TrainingState) -> str:
    """A training run as plain text: a summary and a skorch-like epoch table.

    Parameters
    ----------
    events : iterable of Event or TrainingState
        The run's events in order (other runs' events are skipped), or a folded state.

    Returns
    -------
    str
    """
    return state_text(_as_state(events))


def training_html(events: Iterable[Event] | TrainingState) -> str:
    """A training run as self-contained HTML (progress, ranks, charts, epoch table).

    Parameters
    ----------
    events : iterable of Event or TrainingState
        As for :func:`training_text`.

    Returns
    -------
    str
        A ``<div class="scalekit-training">``; every value is escaped.
    """
    return state_html(_as_state(events))
