"""The words and figures the JupyterLab sidebar and status bar show, made here.

The extension (``extensions/src``) formats no numbers: the kernel sends these strings
in each snapshot (:mod:`scalekit.views.snapshot`), built with the same functions the
notebook panels use, so that the panel's "downtime 152 ms" is the sidebar's too, a
resize reads "after epoch 18" everywhere and rates have thousands separators.
"""

from __future__ import annotations

from typing import Any

from scalekit.events import ClusterSnapshot
from scalekit.views import gpu_render
from scalekit.views.bars import cpu_bar, memory_bar, worker_title
from scalekit.views.cluster_render import cpu_text, machine_memory
from scalekit.views.cluster_state import ClusterState, cpu_percent
from scalekit.views.fmt import fmt_duration, plural
from scalekit.views.timeline_render import checkpoint_text, recoveries_text
from scalekit.views.training_render import batch_text, gpu_memory_text, world_text
from scalekit.views.training_state import TrainingState

__all__ = ["cluster_view", "fmt_loss", "run_view", "worker_view"]


def fmt_loss(value: float | None) -> str:
    """A loss in little room: 3 significant digits (``0.412``, ``1.00``), an exponent
    when tiny or huge (``3.20e-05``); ``–`` when unknown."""
    if value is None:
        return "–"
    a = abs(value)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{value:.2e}"
    return f"{value:#.3g}".rstrip(".")


def worker_view(w: Any) -> dict[str, Any]:
    """A worker's row: tooltip, CPU and memory bars, the GPU row (``None`` without)."""
    return {"title": worker_title(w), "cpu": cpu_bar(w).to_dict(),
            "memory": memory_bar(w).to_dict(), "gpu": gpu_render.gpu_cell(w)}


def _summary(snapshot: ClusterSnapshot, state: ClusterState, memory_text: str) -> str:
    text = plural(snapshot.n_workers, "worker")
    adaptive, requested = state.adaptive, state.requested
    if adaptive is not None:
        text += f" · adaptive {adaptive[0]}..{adaptive[1]}"
    elif requested is not None and requested != snapshot.n_workers:
        text += f" (requested {requested})"
    text += f" · {cpu_text(snapshot)} · memory {memory_text}"
    gpus = gpu_render.gpu_totals_text(snapshot)
    return f"{text} · {gpus}" if gpus else text


def cluster_view(state: ClusterState, machine: int | None = None) -> dict[str, Any]:
    """The cluster's texts: ``summary``, ``status_bar`` (``"3 workers · CPU 10% · mem
    1.4/23.5 GiB"``), ``memory_warning`` and the ``status_line`` while it holds
    (:attr:`ClusterState.status_line`)."""
    snapshot = state.snapshot
    assert snapshot is not None
    memory = machine_memory(snapshot, machine)
    status = state.status_line
    notice = state.notice
    return {
        "summary": _summary(snapshot, state, memory.text),
        "status_bar": (f"{plural(snapshot.n_workers, 'worker')} · "
                       f"CPU {cpu_percent(snapshot):.0f}% · mem {memory.short}"),
        "memory_warning": memory.warning,
        "status_line": None if status is None else {
            "level": status[0], "message": status[1],
            "time": notice.time if notice is not None else snapshot.time,
        },
    }


def _headline(state: TrainingState) -> tuple[str, str]:
    total = state.max_epochs if state.max_epochs is not None else "?"
    key = state.loss_keys[0] if state.loss_keys else None
    row = state.rows[-1] if state.rows else {}
    loss = row.get(key) if key else None
    bar = f"epoch {state.epochs_done}/{total} · loss {fmt_loss(loss)}"
    valid = row.get("valid_loss") if key != "valid_loss" else None
    return bar, (f"{bar} · valid {fmt_loss(valid)}" if valid is not None else bar)


def run_view(state: TrainingState) -> dict[str, Any]:
    """A run's texts: ``headline``, ``status_bar``, ``details`` (one line each) and
    ``alerts`` (``{"level", "message"}``): a failure training has not gone on from
    yet (one line per incident, however many ranks stopped), and a warning while it
    holds (``recovering: ...``, cleared once the next round trains)."""
    status_bar, headline = _headline(state)
    details: list[str] = []
    batch = batch_text(state)
    if batch:
        details.append(batch)
    speed = f"{state.throughput_text} · {world_text(state)}"
    if state.running and state.eta_s is not None:
        speed += f" · ETA {fmt_duration(state.eta_s)}"
    elif state.finished_at is not None:
        speed += f" · took {fmt_duration(state.elapsed_s())}"
    details.append(speed)
    details.append(checkpoint_text(state) or "no checkpoint yet")
    details.append(recoveries_text(state) or "no recoveries")
    gpu = gpu_memory_text(state)
    if gpu:
        details.append(gpu)
    if state.message:  # why it failed or was cancelled: the first line, as the panel's
        details.append(state.message.splitlines()[0][:300])
    alerts = [{"level": "error", "message": i.text} for i in state.incidents.open]
    if state.notice is not None and state.notice[0] != "info" and state.running:
        alerts.append({"level": state.notice[0], "message": state.notice[1]})
    return {"headline": headline, "status_bar": status_bar, "details": details,
            "alerts": alerts}
