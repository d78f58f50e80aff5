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
from scalekit.views.cluster_state import used_fraction
from scalekit.views.fmt import gib
from scalekit.views.html import (
    CPU_COLOR,
    MEMORY_COLOR,
    WARN_COLOR,
    escape,
    percent_bar,
    safe_url,
)

__all__ = [
    "cluster_html",
    "cluster_text",
    "dashboard_html",
    "history_html",
    "sparkline_svg",
    "totals_html",
    "workers_html",
]


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
    gpus = bool(snapshot.gpu_workers)  # CPU-only clusters: lines as before GPUs were shown
    if gpus:
        lines.append(f"  {gpu_render.gpu_totals_text(snapshot)}")
    width = max((len(w.name) for w in snapshot.workers), default=0)
    for w in snapshot.workers:
        status = "" if w.status == "running" else f"  [{w.status}]"
        gpu_part = f"{gpu_render.gpu_text(w)}  " if gpus and w.has_gpu else ""
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


def _cpu_bar(cpu: float, nthreads: int) -> str:
    # psutil reports a process's CPU as percent of one core: a full worker is 100 * threads
    capacity = 100.0 * max(nthreads, 1)
    return percent_bar(min(cpu / capacity, 1.0), f"{cpu:.0f} %", color=CPU_COLOR)


def _memory_bar(memory: int, limit: int) -> str:
    fraction = used_fraction(memory, limit)
    color = MEMORY_COLOR if fraction < 0.8 else WARN_COLOR
    return percent_bar(fraction, _memory_summary(memory, limit), color=color, width="14em")


def _worker_row(w: WorkerStats, gpu_column: bool = False) -> str:
    status = "" if w.status == "running" else f" <em>({escape(w.status)})</em>"
    gpu = f"<td>{gpu_render.gpu_cell_html(w)}</td>" if gpu_column else ""
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
    gpus = gpu_render.gpu_totals_text(snapshot) if snapshot.gpu_workers else ""
    return (
        f'<div class="scalekit-totals"><b>{escape(_workers_summary(snapshot))}</b> · '
        f"{snapshot.total_threads} threads · CPU {snapshot.mean_cpu:.1f} % (mean) · "
        f"memory {escape(_memory_summary(snapshot.total_memory, snapshot.total_memory_limit))}"
        f"{' · ' + escape(gpus) if gpus else ''}</div>"
    )


def dashboard_html(url: str | None) -> str:
    """A link to the Dask dashboard, or an empty string when there is none."""
    safe = safe_url(url)
    if safe is None:
        return ""
    return (
        f'<a class="scalekit-dashboard" href="{escape(safe)}" target="_blank" '
        f'rel="noopener noreferrer">Dask dashboard ↗</a>'
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
