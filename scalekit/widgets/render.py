"""Pure renderers for cluster snapshots: plain text, HTML and an SVG sparkline.

Nothing here imports ipywidgets, so the same pictures serve the live panel, the
``text/html`` / ``text/plain`` fallbacks of a notebook without the widget manager,
``repr(session)``, the magics and the CLI. Every value that reaches HTML is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from types import ModuleType

from scalekit.events import ClusterSnapshot, Event, WorkerStats
from scalekit.widgets.charts import PALETTE, line_chart_svg
from scalekit.widgets.training_state import TrainingState

GIB = float(2**30)
CPU_COLOR = "#1f77b4"
MEMORY_COLOR = "#2ca02c"
WARN_COLOR = "#ff7f0e"
DANGER_COLOR = "#d62728"
LEVEL_COLORS = {"info": "inherit", "warning": WARN_COLOR, "error": DANGER_COLOR}

__all__ = [
    "cluster_html",
    "cluster_text",
    "dashboard_html",
    "cpu_percent",
    "escape",
    "gib",
    "history_html",
    "line_chart_svg",
    "memory_percent",
    "notice_html",
    "PALETTE",
    "percent_bar",
    "sparkline_svg",
    "totals_html",
    "training_html",
    "training_text",
    "workers_html",
]


def escape(value: object) -> str:
    """HTML-escape ``str(value)``, quotes included (safe inside attributes)."""
    return html.escape(str(value), quote=True)


def gib(n_bytes: int | float) -> str:
    """Bytes as GiB with two decimals, e.g. ``"1.50"``."""
    return f"{n_bytes / GIB:.2f}"


def _fraction(used: float, limit: float) -> float:
    return used / limit if limit > 0 else 0.0


def _safe_url(url: str | None) -> str | None:
    """The URL if it is plain http(s) or a same-origin path (JupyterHub/Binder proxy
    links such as ``/user/x/proxy/8787/status``), else ``None`` (never ``javascript:``)."""
    if not url:
        return None
    url = url.strip()
    if url.lower().startswith(("http://", "https://")):
        return url
    if url.startswith("/") and not url.startswith("//"):
        return url
    return None


def _workers_summary(snapshot: ClusterSnapshot) -> str:
    n = snapshot.n_workers
    text = f"{n} worker{'s' if n != 1 else ''}"
    if snapshot.adaptive is not None:
        lo, hi = snapshot.adaptive
        text += f" (adaptive {lo}..{hi})"
    elif snapshot.requested is not None:
        text += f" (requested {snapshot.requested})"
    return text


def _memory_summary(used: int, limit: int) -> str:
    return f"{gib(used)} / {gib(limit)} GiB" if limit else f"{gib(used)} GiB (no limit)"


def cpu_percent(snapshot: ClusterSnapshot) -> float:
    """Cluster CPU use in percent of its capacity (100 % = every thread busy)."""
    capacity = 100.0 * snapshot.total_threads
    return 100.0 * _fraction(sum(w.cpu for w in snapshot.workers), capacity)


def memory_percent(snapshot: ClusterSnapshot) -> float:
    """Cluster memory use in percent of the summed worker limits (0 without limits)."""
    return 100.0 * _fraction(snapshot.total_memory, snapshot.total_memory_limit)


# --- text ----------------------------------------------------------------------------


def cluster_text(snapshot: ClusterSnapshot) -> str:
    """A readable multi-line description of ``snapshot``.

    Parameters
    ----------
    snapshot : ClusterSnapshot
        The cluster state to describe.

    Returns
    -------
    str
        Backend and status, worker count (requested or adaptive bounds), totals, one
        line per worker and the dashboard link.
    """
    lines = [f"scalekit cluster · {snapshot.backend} · {snapshot.status}"]
    if snapshot.status == "closed":
        return lines[0]
    lines.append(f"  {_workers_summary(snapshot)}")
    lines.append(
        f"  threads {snapshot.total_threads}, CPU {snapshot.mean_cpu:.1f} % (mean), "
        f"memory {_memory_summary(snapshot.total_memory, snapshot.total_memory_limit)}"
    )
    gpu = _gpu_render() if snapshot.gpu_workers else None  # CPU-only: lines as before
    if gpu is not None:
        lines.append(f"  {gpu.gpu_totals_text(snapshot)}")
    width = max((len(w.name) for w in snapshot.workers), default=0)
    for w in snapshot.workers:
        status = "" if w.status == "running" else f"  [{w.status}]"
        gpu_part = f"{gpu.gpu_text(w)}  " if gpu is not None and w.has_gpu else ""
        lines.append(
            f"    {w.name:<{width}}  CPU {w.cpu:5.1f} %  "
            f"memory {_memory_summary(w.memory, w.memory_limit)}  {gpu_part}{w.address}{status}"
        )
    if snapshot.dashboard_link:
        lines.append(f"  dashboard: {snapshot.dashboard_link}")
    for key, value in snapshot.details:
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


# --- HTML pieces -----------------------------------------------------------------------


def percent_bar(
    fraction: float, label: str = "", *, color: str = CPU_COLOR, width: str = "10em"
) -> str:
    """A horizontal bar filled to ``fraction`` (clamped to 0..1) with a text label.

    Parameters
    ----------
    fraction : float
        How full the bar is; values above 1 draw a full bar in the danger colour.
    label : str
        Text drawn on the bar (escaped).
    color : str
        CSS colour of the filled part.
    width : str
        CSS width of the whole bar.
    """
    fill = min(max(float(fraction), 0.0), 1.0)
    if fraction > 1.0:
        color = DANGER_COLOR
    return (
        f'<div class="scalekit-bar" style="position:relative;width:{escape(width)};'
        'height:1.1em;background:#e6e6e6;border-radius:2px;overflow:hidden;'
        'display:inline-block;vertical-align:middle">'
        f'<div style="width:{fill * 100:.1f}%;height:100%;background:{escape(color)}"></div>'
        '<span style="position:absolute;left:0.3em;top:0;font-size:0.8em;'
        f'line-height:1.4em;color:#000">{escape(label)}</span></div>'
    )


def _cpu_bar(cpu: float, nthreads: int) -> str:
    # psutil reports a process's CPU as percent of one core: a full worker is 100 * threads
    capacity = 100.0 * max(nthreads, 1)
    return percent_bar(min(cpu / capacity, 1.0), f"{cpu:.0f} %", color=CPU_COLOR)


def _memory_bar(memory: int, limit: int) -> str:
    fraction = _fraction(memory, limit)
    color = MEMORY_COLOR if fraction < 0.8 else WARN_COLOR
    return percent_bar(fraction, _memory_summary(memory, limit), color=color, width="14em")


def _gpu_render() -> ModuleType:
    # imported when a cluster has GPUs (gpu_render draws with this module's bars)
    from scalekit.widgets import gpu_render

    return gpu_render


def _worker_row(w: WorkerStats, gpu_column: bool = False) -> str:
    status = "" if w.status == "running" else f" <em>({escape(w.status)})</em>"
    gpu = f"<td>{_gpu_render().gpu_cell_html(w)}</td>" if gpu_column else ""
    return (
        f'<tr class="scalekit-worker"><td title="{escape(w.address)}">{escape(w.name)}{status}'
        f"</td><td>{w.nthreads}</td><td>{_cpu_bar(w.cpu, w.nthreads)}</td>"
        f"<td>{_memory_bar(w.memory, w.memory_limit)}</td>{gpu}</tr>"
    )


def workers_html(snapshot: ClusterSnapshot) -> str:
    """A table with one row per worker: name, threads, CPU bar, memory bar, and a GPU
    column (utilisation and memory bars) only when some worker has a GPU."""
    if not snapshot.workers:
        return '<div class="scalekit-workers"><em>no workers</em></div>'
    gpu_column = bool(snapshot.gpu_workers)
    rows = "".join(_worker_row(w, gpu_column) for w in snapshot.workers)
    gpu_head = "<th>GPU</th>" if gpu_column else ""
    return (
        '<table class="scalekit-workers" style="border-collapse:collapse;font-size:0.9em">'
        "<thead><tr><th style='text-align:left'>worker</th><th>threads</th><th>CPU</th>"
        f"<th>memory</th>{gpu_head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def totals_html(snapshot: ClusterSnapshot) -> str:
    """One line of cluster totals: workers, threads, mean CPU, memory (and GPUs)."""
    gpus = _gpu_render().gpu_totals_text(snapshot) if snapshot.gpu_workers else ""
    return (
        f'<div class="scalekit-totals"><b>{escape(_workers_summary(snapshot))}</b> · '
        f"{snapshot.total_threads} threads · CPU {snapshot.mean_cpu:.1f} % (mean) · "
        f"memory {escape(_memory_summary(snapshot.total_memory, snapshot.total_memory_limit))}"
        f"{' · ' + escape(gpus) if gpus else ''}</div>"
    )


def dashboard_html(url: str | None) -> str:
    """A link to the Dask dashboard, or an empty string when there is none."""
    safe = _safe_url(url)
    if safe is None:
        return ""
    return (
        f'<a class="scalekit-dashboard" href="{escape(safe)}" target="_blank" '
        f'rel="noopener noreferrer">Dask dashboard ↗</a>'
    )


def notice_html(level: str, message: str) -> str:
    """A status line; errors in red, warnings in orange."""
    color = LEVEL_COLORS.get(level, "inherit")
    weight = "bold" if level == "error" else "normal"
    return (
        f'<div class="scalekit-status scalekit-{escape(level)}" '
        f'style="color:{color};font-weight:{weight}">{escape(message)}</div>'
    )


def _polyline(values: Sequence[float], width: float, height: float, top: float) -> str:
    n = len(values)
    step = width / (n - 1) if n > 1 else 0.0
    points = []
    for i, v in enumerate(values):
        y = height - min(max(float(v), 0.0), top) / top * height
        points.append(f"{i * step:.1f},{y:.1f}")
    if n == 1:  # a single sample: a flat line across
        points.append(f"{width:.1f},{points[0].split(',')[1]}")
    return " ".join(points)


def sparkline_svg(
    cpu_series: Sequence[float],
    mem_series: Sequence[float],
    width: int = 240,
    height: int = 40,
) -> str:
    """A small inline SVG with CPU and memory history as two lines.

    Parameters
    ----------
    cpu_series : sequence of float
        CPU percent per sample, oldest first.
    mem_series : sequence of float
        Memory in percent of the limit per sample, oldest first.
    width, height : int
        Size of the picture in pixels.

    Returns
    -------
    str
        An ``<svg>`` element; both series share a 0..max(100, peak) scale.
    """
    peak = max([100.0, *cpu_series, *mem_series])
    lines = []
    for series, color, name in (
        (cpu_series, CPU_COLOR, "CPU"),
        (mem_series, MEMORY_COLOR, "memory"),
    ):
        if series:
            points = _polyline(series, width, height, peak)
            lines.append(
                f'<polyline class="scalekit-spark-{name.lower()}" fill="none" '
                f'stroke="{color}" stroke-width="1.5" points="{points}">'
                f"<title>{name} %</title></polyline>"
            )
    return (
        f'<svg class="scalekit-sparkline" xmlns="http://www.w3.org/2000/svg" '
        f'width="{int(width)}" height="{int(height)}" viewBox="0 0 {int(width)} {int(height)}" '
        f'style="background:#fafafa;border:1px solid #ddd">{"".join(lines)}</svg>'
    )


def history_html(cpu_series: Sequence[float], mem_series: Sequence[float]) -> str:
    """The sparkline with a small legend showing the latest values."""
    if not cpu_series and not mem_series:
        return ""
    cpu = f"{cpu_series[-1]:.0f} %" if cpu_series else "–"
    mem = f"{mem_series[-1]:.0f} %" if mem_series else "–"
    return (
        f'<div class="scalekit-history">{sparkline_svg(cpu_series, mem_series)}'
        f'<div style="font-size:0.8em"><span style="color:{CPU_COLOR}">■ CPU {cpu}</span> '
        f'<span style="color:{MEMORY_COLOR}">■ memory {mem}</span></div></div>'
    )


# --- whole cluster ---------------------------------------------------------------------


def cluster_html(snapshot: ClusterSnapshot) -> str:
    """The cluster as a small self-contained HTML block (no widget manager needed).

    Parameters
    ----------
    snapshot : ClusterSnapshot
        The cluster state to draw.

    Returns
    -------
    str
        A ``<div>`` with a header, totals, a per-worker table with CSS bars and the
        dashboard link.
    """
    header = (
        f"<div><b>scalekit cluster</b> · {escape(snapshot.backend)} · "
        f"{escape(snapshot.status)}</div>"
    )
    parts = [header]
    if snapshot.status != "closed":
        parts += [totals_html(snapshot), workers_html(snapshot), dashboard_html(
            snapshot.dashboard_link
        )]
        if snapshot.details:
            items = "".join(
                f"<li>{escape(k)}: {escape(v)}</li>" for k, v in snapshot.details
            )
            parts.append(f'<ul class="scalekit-details">{items}</ul>')
    return f'<div class="scalekit-cluster">{"".join(parts)}</div>'


# --- training --------------------------------------------------------------------------
# The training pictures live in scalekit.widgets.training_render; the entry points below
# keep one import path for every renderer (``render.training_text`` in ``repr(run)``);
# the SVG charts live in scalekit.widgets.charts (``line_chart_svg`` is re-exported).


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
    from scalekit.widgets.training_render import state_text

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
    from scalekit.widgets.training_render import state_html

    return state_html(_as_state(events))


def _as_state(events: Iterable[Event] | TrainingState) -> TrainingState:
    if isinstance(events, TrainingState):
        return events
    return TrainingState.from_events(events)
