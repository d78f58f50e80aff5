"""Pure renderers for the GPUs of a cluster: per-worker text and HTML cells, totals.

A worker has a GPU when it advertises the Dask resource ``GPU`` or when Dask's NVML
monitoring reports a device (:attr:`~scalekit.events.WorkerStats.has_gpu`). Only then
does anything here draw; :mod:`scalekit.views.cluster_render` calls in only for clusters
with GPU workers, so a CPU-only cluster looks exactly as it did before GPUs were shown.
Without nvidia-ml-py the workers cannot measure their GPU: they are shown as GPU
workers with :data:`NVML_HINT`. No ipywidgets here; every value reaching HTML is escaped.
"""

from __future__ import annotations

from typing import Any

from scalekit.events import ClusterSnapshot, WorkerStats
from scalekit.views.bars import Bar
from scalekit.views.fmt import gib
from scalekit.views.html import WARN_COLOR, escape, percent_bar

__all__ = [
    "GPU_COLOR",
    "GPU_MEMORY_COLOR",
    "NVML_HINT",
    "NVML_HINT_LONG",
    "gpu_cell",
    "gpu_cell_html",
    "gpu_label",
    "gpu_text",
    "gpu_totals_text",
]

GPU_COLOR = "#9467bd"
GPU_MEMORY_COLOR = "#8c564b"
NVML_HINT = "utilisation needs nvidia-ml-py"
NVML_HINT_LONG = (
    "GPU utilisation and memory need nvidia-ml-py on the workers: "
    "pip install 'scalekit[gpu]'"
)


def _resource(w: WorkerStats) -> str:
    """``"GPU=1"``: the resource as Dask spells it (``:g`` drops a float's ``.0``)."""
    return f"GPU={w.gpus:g}" if w.gpus > 0 else ""


def gpu_label(w: WorkerStats) -> str:
    """What the worker's GPU is: ``"NVIDIA H200 · GPU=1"``, ``"GPU=1"`` or ``"GPU"``.

    The device's name comes from NVML when the worker reported it; the resource says
    that scalekit pinned one device to the worker (its ``CUDA_VISIBLE_DEVICES``, which
    ``scheduler_info()`` does not carry).
    """
    parts = [p for p in (w.gpu_name, _resource(w)) if p]
    return " · ".join(parts) or "GPU"


def _memory(used: int | None, total: int | None) -> str:
    if used is None:
        return f"– / {gib(total)} GiB" if total else "–"
    return f"{gib(used)} / {gib(total)} GiB" if total else f"{gib(used)} GiB"


def _utilization(w: WorkerStats) -> str:
    return "–" if w.gpu_utilization is None else f"{w.gpu_utilization:.0f} %"


def gpu_text(w: WorkerStats) -> str:
    """One worker's GPU for the text form, ``""`` for a worker without one.

    ``"GPU 37 %  GPU memory 3.20 / 140.00 GiB  [NVIDIA H200 · GPU=1]"``, or without
    NVML ``"GPU=1 (utilisation needs nvidia-ml-py)"``.
    """
    if not w.has_gpu:
        return ""
    if not w.gpu_monitored:
        return f"{gpu_label(w)} ({NVML_HINT})"
    text = f"GPU {_utilization(w)}  GPU memory {_memory(w.gpu_memory, w.gpu_memory_total)}"
    label = " · ".join(p for p in (w.gpu_name, _resource(w)) if p)
    return f"{text}  [{label}]" if label else text


def gpu_cell_html(w: WorkerStats) -> str:
    """The GPU cell of a worker's row: utilisation and memory bars, or the hint."""
    if not w.has_gpu:
        return '<span class="scalekit-no-gpu" style="color:#888">–</span>'
    label = escape(gpu_label(w))
    if not w.gpu_monitored:
        return (f'<span class="scalekit-gpu scalekit-gpu-hint" title="{escape(NVML_HINT_LONG)}"'
                f' style="font-size:0.85em">{label} · <em>{escape(NVML_HINT)}</em></span>')
    util = w.gpu_utilization
    fraction = util / 100.0 if util is not None else 0.0
    total = w.gpu_memory_total or 0
    used = w.gpu_memory or 0
    mem_fraction = used / total if total > 0 else 0.0
    mem_color = GPU_MEMORY_COLOR if mem_fraction < 0.9 else WARN_COLOR
    util_bar = percent_bar(min(fraction, 1.0), _utilization(w), color=GPU_COLOR, width="5em")
    mem_bar = percent_bar(mem_fraction, _memory(w.gpu_memory, w.gpu_memory_total),
                          color=mem_color, width="11em")
    # the resource in sight (the pinned device), the device's name in the tooltip
    tag = (f'<span class="scalekit-gpu-tag" style="font-size:0.8em">{escape(_resource(w))}'
           "</span> " if w.gpus > 0 else "")
    return f'<span class="scalekit-gpu" title="{label}">{tag}{util_bar} {mem_bar}</span>'


def gpu_cell(w: WorkerStats) -> dict[str, Any] | None:
    """The sidebar's GPU row of a worker, as JSON (``None`` for a worker without one):
    ``tag`` (``GPU=1``), ``title``, ``utilization`` and ``memory`` bars, or ``hint``."""
    if not w.has_gpu:
        return None
    label = gpu_label(w)
    cell: dict[str, Any] = {"tag": _resource(w) or "GPU", "title": label,
                            "utilization": None, "memory": None, "hint": None}
    if not w.gpu_monitored:
        cell.update(hint=NVML_HINT, title=f"{label}: {NVML_HINT_LONG}")
        return cell
    util = w.gpu_utilization
    total, used = w.gpu_memory_total or 0, w.gpu_memory or 0
    cell["utilization"] = Bar.of((util or 0.0) / 100.0, _utilization(w)).to_dict()
    cell["memory"] = Bar.of(used / total if total > 0 else 0.0,
                            _memory(w.gpu_memory, w.gpu_memory_total), warn_at=0.9).to_dict()
    return cell


def gpu_totals_text(snapshot: ClusterSnapshot) -> str:
    """``"2 GPU workers · GPU 40 % (mean) · GPU memory 6.40 / 280.00 GiB"``, ``""`` without.

    The mean and the sums cover the workers whose NVML reported them; a cluster whose
    workers all lack nvidia-ml-py says so instead.
    """
    gpus = snapshot.gpu_workers
    if not gpus:
        return ""
    # workers, not devices: unpinned workers on one machine all see the same GPU
    text = f"{len(gpus)} GPU worker{'s' if len(gpus) != 1 else ''}"
    utilization = snapshot.mean_gpu_utilization
    if utilization is not None:
        text += f" · GPU {utilization:.0f} % (mean)"
    memory = snapshot.total_gpu_memory
    if memory is not None:
        text += f" · GPU memory {_memory(*memory)}"
    if not any(w.gpu_monitored for w in gpus):
        text += f" ({NVML_HINT})"
    return text
