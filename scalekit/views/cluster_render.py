"""Pure renderers for cluster snapshots: plain text, HTML and an SVG sparkline.

Nothing here imports ipywidgets, so the same pictures serve the live panel, the
``text/html`` / ``text/plain`` fallbacks of a notebook without the widget manager,
``repr(session)``, the magics and the CLI. GPU cells come from
:mod:`scalekit.views.gpu_render`, drawn only for clusters with GPU workers. Every value
that reaches HTML is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from scalekit.events import ClusterSnapshot, WorkerStats
from scalekit.views import gpu_render
from scalekit.views.bars import Bar, cpu_bar, memory_bar, memory_text, worker_title
from scalekit.views.cluster_state import cpu_percent
from scalekit.views.fmt import fmt_seconds, plural
from scalekit.views.html import (
    CPU_COLOR,
    MEMORY_COLOR,
    WARN_COLOR,
    escape,
    notice_html,
    percent_bar,
    safe_url,
)
from scalekit.views.memory import MemoryView, local_machine_memory, memory_view

__all__ = [
    "cluster_html",
    "cluster_text",
    "cpu_text",
    "dashboard_html",
    "header_html",
    "history_html",
    "machine_memory",
    "memory_warning_html",
    "sparkline_svg",
    "totals_html",
    "workers_html",
    "workers_summary",
]

CELL = "padding:0.1em 0.9em 0.1em 0"  # room between the columns, headers included


def workers_summary(snapshot: ClusterSnapshot) -> str:
    """``"2 workers (requested 3)"``, ``"3 workers (adaptive 1..4)"``."""
    text = plural(snapshot.n_workers, "worker")
    if snapshot.adaptive is not None:
        lo, hi = snapshot.adaptive
        text += f" (adaptive {lo}..{hi})"
    elif snapshot.requested is not None and snapshot.requested != snapshot.n_workers:
        text += f" (requested {snapshot.requested})"
    return text


def cpu_text(snapshot: ClusterSnapshot) -> str:
    """``"CPU 58 % of 3 threads"``: every view's CPU figure (100 % = all threads busy)."""
    return f"CPU {cpu_percent(snapshot):.0f} % of {plural(snapshot.total_threads, 'thread')}"


def machine_memory(snapshot: ClusterSnapshot, machine: int | None = None) -> MemoryView:
    """The memory figures of ``snapshot``: against ``machine`` bytes when given, by
    default against this machine's memory when the workers run here (``0``: unknown)."""
    if machine is None:
        machine = local_machine_memory(snapshot)
    return memory_view(snapshot, machine or None)


# --- text ----------------------------------------------------------------------------


def cluster_text(snapshot: ClusterSnapshot, machine: int | None = None) -> str:
    """A readable multi-line description of ``snapshot``.

    Parameters
    ----------
    snapshot : ClusterSnapshot
        The cluster state to describe.
    machine : int, optional
        The machine's memory in bytes (see :func:`machine_memory`).

    Returns
    -------
    str
        Backend and status, worker count (requested or adaptive bounds), totals, a
        warning when the memory limits overcommit the machine, one line per worker and
        the dashboard link.
    """
    lines = [f"scalekit cluster · {snapshot.backend} · {snapshot.status}"]
    if snapshot.status == "closed":
        return lines[0]
    memory = machine_memory(snapshot, machine)
    lines.append(f"  {workers_summary(snapshot)}")
    lines.append(f"  {cpu_text(snapshot)}, memory {memory.text}")
    if memory.warning:
        lines.append(f"  warning: {memory.warning}")
    gpus = bool(snapshot.gpu_workers)  # CPU-only clusters: lines as before GPUs were shown
    if gpus:
        lines.append(f"  {gpu_render.gpu_totals_text(snapshot)}")
    width = max((len(w.name) for w in snapshot.workers), default=0)
    for w in snapshot.workers:
        status = "" if w.status == "running" else f"  [{w.status}]"
        gpu_part = f"{gpu_render.gpu_text(w)}  " if gpus and w.has_gpu else ""
        lines.append(
            f"    {w.name:<{width}}  {plural(w.nthreads, 'thread')}  CPU {w.cpu:5.1f} %  "
            f"memory {memory_text(w.memory, w.memory_limit)}  {gpu_part}{w.address}{status}"
        )
    if snapshot.dashboard_link:
        lines.append(f"  dashboard: {snapshot.dashboard_link}")
    for key, value in snapshot.details:
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


# --- HTML pieces -----------------------------------------------------------------------


def _bar(bar: Bar, color: str, width: str) -> str:
    return percent_bar(bar.fraction if not bar.over else 1.5, bar.label,
                       color=WARN_COLOR if bar.warn and not bar.over else color, width=width)


def _worker_row(w: WorkerStats, gpu_column: bool = False) -> str:
    status = "" if w.status == "running" else f" <em>({escape(w.status)})</em>"
    gpu = f'<td style="{CELL}">{gpu_render.gpu_cell_html(w)}</td>' if gpu_column else ""
    return (
        f'<tr class="scalekit-worker"><td title="{escape(worker_title(w))}" style="{CELL}">'
        f"{escape(w.name)}{status}</td>"
        f'<td style="{CELL};text-align:right">{w.nthreads}</td>'
        f'<td style="{CELL}">{_bar(cpu_bar(w), CPU_COLOR, "5em")}</td>'
        f'<td style="{CELL}">{_bar(memory_bar(w), MEMORY_COLOR, "7em")}</td>{gpu}</tr>'
    )


def workers_html(snapshot: ClusterSnapshot) -> str:
    """A table with one row per worker: name, threads, CPU bar, memory bar, and a GPU
    column (utilisation and memory bars) only when some worker has a GPU. Each bar's
    label sits beside it."""
    if not snapshot.workers:
        return '<div class="scalekit-workers"><em>no workers</em></div>'
    gpu_column = bool(snapshot.gpu_workers)
    rows = "".join(_worker_row(w, gpu_column) for w in snapshot.workers)
    th = f"{CELL};font-weight:normal;color:#555"
    gpu_head = f'<th style="{th};text-align:left">GPU</th>' if gpu_column else ""
    return (
        '<table class="scalekit-workers" style="border-collapse:collapse;font-size:0.9em">'
        f'<thead><tr><th style="{th};text-align:left">worker</th>'
        f'<th style="{th};text-align:right">threads</th>'
        f'<th style="{th};text-align:left">CPU</th>'
        f'<th style="{th};text-align:left">memory</th>{gpu_head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def totals_html(snapshot: ClusterSnapshot, machine: int | None = None) -> str:
    """One line of cluster totals: workers, CPU of the threads, memory (and GPUs)."""
    gpus = gpu_render.gpu_totals_text(snapshot) if snapshot.gpu_workers else ""
    memory = machine_memory(snapshot, machine)
    return (
        f'<div class="scalekit-totals"><b>{escape(workers_summary(snapshot))}</b> · '
        f"{escape(cpu_text(snapshot))} · memory {escape(memory.text)}"
        f"{' · ' + escape(gpus) if gpus else ''}</div>"
    )


def memory_warning_html(snapshot: ClusterSnapshot, machine: int | None = None) -> str:
    """An orange line when the workers' memory limits overcommit the machine, else ``""``."""
    warning = machine_memory(snapshot, machine).warning
    if warning is None:
        return ""
    return (f'<div class="scalekit-memory-warning" style="color:{WARN_COLOR}">'
            f"⚠ {escape(warning)}</div>")


def header_html(snapshot: ClusterSnapshot | None, *, link: bool = True) -> str:
    """``scalekit cluster · local · running · Dask dashboard ↗`` (the link only while
    the cluster runs and has one). ``link=False``: the text up to the link, with the
    separator when a link follows (the live panel draws the link in a widget of its
    own)."""
    if snapshot is None:
        return "<b>scalekit cluster</b> · waiting for the first snapshot"
    text = (f"<b>scalekit cluster</b> · {escape(snapshot.backend)} · "
            f"{escape(snapshot.status)}")
    anchor = dashboard_html(snapshot.dashboard_link) if snapshot.status != "closed" else ""
    if not anchor:
        return text
    return f"{text} · {anchor}" if link else f"{text} ·"


def dashboard_html(url: str | None) -> str:
    """A link to the Dask dashboard, or an empty string when there is none."""
    safe = safe_url(url)
    if safe is None:
        return ""
    return (
        f'<a class="scalekit-dashboard" href="{escape(safe)}" target="_blank" '
        f'rel="noopener noreferrer">Dask dashboard ↗</a>'
    )


def _polyline(values: Sequence[float], x: float, y: float, width: float, height: float,
              top: float) -> str:
    n = len(values)
    step = width / (n - 1) if n > 1 else 0.0
    points = []
    for i, v in enumerate(values):
        py = y + height - min(max(float(v), 0.0), top) / top * height
        points.append(f"{x + i * step:.1f},{py:.1f}")
    if n == 1:  # a single sample: a flat line across
        points.append(f"{x + width:.1f},{points[0].split(',')[1]}")
    return " ".join(points)


def sparkline_svg(
    cpu_series: Sequence[float],
    mem_series: Sequence[float],
    width: int = 240,
    height: int = 40,
    *,
    span_s: float | None = None,
) -> str:
    """A small inline SVG with CPU and memory history as two lines, with axes.

    Parameters
    ----------
    cpu_series : sequence of float
        CPU percent per sample, oldest first.
    mem_series : sequence of float
        Memory in percent of the limit per sample, oldest first.
    width, height : int
        Size of the plot in pixels; with ``span_s`` the picture adds margins for the
        axes (the y axis in percent on the left, the time span below).
    span_s : float, optional
        Seconds from the oldest sample to the newest: the x axis reads
        ``-2m 05s … now``. Without it, the bare plot (no axes).

    Returns
    -------
    str
        An ``<svg>`` element; both series share a 0..max(100, peak) scale.
    """
    peak = max([100.0, *cpu_series, *mem_series])
    axes = span_s is not None
    left, bottom = (30.0, 14.0) if axes else (0.0, 0.0)
    top = 4.0 if axes else 0.0
    full_w, full_h = width + left + (4.0 if axes else 0.0), height + top + bottom
    parts = []
    if axes:
        base, right = top + height, left + width
        parts += [
            f'<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#bbb"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#bbb"/>',
            f'<text x="{left - 3}" y="{top + 8}" text-anchor="end" fill="#555">'
            f"{peak:.0f}%</text>",
            f'<text x="{left - 3}" y="{base}" text-anchor="end" fill="#555">0</text>',
            f'<text class="scalekit-spark-span" x="{left}" y="{full_h - 3}" fill="#555">'
            f"−{escape(fmt_seconds(span_s))}</text>",
            f'<text x="{right}" y="{full_h - 3}" text-anchor="end" fill="#555">now</text>',
        ]
    for series, color, name in (
        (cpu_series, CPU_COLOR, "CPU"),
        (mem_series, MEMORY_COLOR, "memory"),
    ):
        if series:
            points = _polyline(series, left, top, width, height, peak)
            parts.append(
                f'<polyline class="scalekit-spark-{name.lower()}" fill="none" '
                f'stroke="{color}" stroke-width="1.5" points="{points}">'
                f"<title>{name} %</title></polyline>"
            )
    w, h = int(full_w), int(full_h)
    return (
        f'<svg class="scalekit-sparkline" xmlns="http://www.w3.org/2000/svg" '
        f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'style="background:#fafafa;border:1px solid #ddd;font:9px sans-serif">'
        f'{"".join(parts)}</svg>'
    )


def history_html(cpu_series: Sequence[float], mem_series: Sequence[float],
                 span_s: float | None = None) -> str:
    """The sparkline (with axes and time span) and a legend with the latest values."""
    if not cpu_series and not mem_series:
        return ""
    cpu = f"{cpu_series[-1]:.0f} %" if cpu_series else "–"
    mem = f"{mem_series[-1]:.0f} %" if mem_series else "–"
    svg = sparkline_svg(cpu_series, mem_series, 200, 40, span_s=span_s or 0.0)
    return (
        f'<div class="scalekit-history">{svg}'
        f'<div style="font-size:0.8em"><span style="color:{CPU_COLOR}">■ CPU {cpu}</span> '
        f'<span style="color:{MEMORY_COLOR}">■ memory {mem} of the limits</span></div></div>'
    )


# --- whole cluster ---------------------------------------------------------------------


def cluster_html(snapshot: ClusterSnapshot, machine: int | None = None, *,
                 status: tuple[str, str] | None = None) -> str:
    """The cluster as a small self-contained HTML block (no widget manager needed).

    Parameters
    ----------
    snapshot : ClusterSnapshot
        The cluster state to draw.
    machine : int, optional
        The machine's memory in bytes (see :func:`machine_memory`).
    status : (str, str), optional
        ``(level, message)`` for a status line at the bottom (the panel's).

    Returns
    -------
    str
        A ``<div>`` with a header (and the dashboard link), totals, a memory warning,
        a per-worker table with CSS bars and the status line.
    """
    parts = [f"<div>{header_html(snapshot)}</div>"]
    if snapshot.status != "closed":
        parts += [totals_html(snapshot, machine), memory_warning_html(snapshot, machine),
                  workers_html(snapshot)]
        if snapshot.details:
            items = "".join(
                f"<li>{escape(k)}: {escape(v)}</li>" for k, v in snapshot.details
            )
            parts.append(f'<ul class="scalekit-details">{items}</ul>')
    if status is not None:
        parts.append(notice_html(*status))
    return f'<div class="scalekit-cluster">{"".join(parts)}</div>'
