"""The JSON snapshots of the JupyterLab extension: pure functions of the folded views.

The kernel side of the extension (:mod:`scalekit.labext`) sends what these build: the
cluster part from a :class:`~scalekit.views.cluster_state.ClusterState`'s events, one
part per run from a :class:`~scalekit.views.training_state.TrainingState`, the same
folds the notebook panels draw. Everything returned is strict JSON (no NaN); message
shapes are described in :mod:`scalekit.labext` and ``extensions/src/protocol.ts``.

Besides the raw figures, each part carries a ``view``: the strings and bars the
sidebar and the status bar show, made by :mod:`scalekit.views.lab_text` with the
panels' own formatting. The extension formats no numbers itself.
"""

from __future__ import annotations

from typing import Any

from scalekit.events import AdaptChanged, ClusterSnapshot, Notice, ScaleRequested, WorkerStats
from scalekit.views.cluster_state import ClusterState, cpu_percent
from scalekit.views.fmt import is_number
from scalekit.views.lab_text import cluster_view, run_view, worker_view
from scalekit.views.training_state import TrainingState

__all__ = ["MAX_WORKERS_SHOWN", "cluster_dict", "run_dict", "worker_dict"]

MAX_WORKERS_SHOWN = 64  # a 500-worker cluster's snapshot stays small; totals count all


def _number(value: Any) -> float | None:
    """A finite float, else ``None`` (JSON has no NaN)."""
    return float(value) if is_number(value) else None


def _bytes(value: int | None) -> int | None:
    return None if value is None else int(value)


def worker_dict(w: WorkerStats) -> dict[str, Any]:
    """One worker and its ``view`` (bars, tooltip); ``"gpu"`` only for a worker that
    has one (CPU workers as before)."""
    d: dict[str, Any] = {
        "name": w.name, "address": w.address, "nthreads": w.nthreads,
        "cpu": _number(w.cpu) or 0.0, "memory": int(w.memory),
        "memory_limit": int(w.memory_limit), "status": w.status,
        "view": worker_view(w),
    }
    if w.has_gpu:
        d["gpu"] = {
            "name": w.gpu_name, "resource": _number(w.gpus) or 0.0,
            "monitored": w.gpu_monitored, "utilization": _number(w.gpu_utilization),
            "memory": _bytes(w.gpu_memory), "memory_total": _bytes(w.gpu_memory_total),
        }
    return d


def _gpu_totals(snapshot: ClusterSnapshot) -> dict[str, Any] | None:
    gpus = snapshot.gpu_workers
    if not gpus:
        return None
    memory = snapshot.total_gpu_memory
    return {
        "workers": len(gpus), "monitored": any(w.gpu_monitored for w in gpus),
        "utilization": _number(snapshot.mean_gpu_utilization),
        "memory": None if memory is None else memory[0],
        "memory_total": None if memory is None else memory[1],
    }


def cluster_dict(
    snapshot: ClusterSnapshot,
    *,
    cluster_id: str,
    adapt: AdaptChanged | None = None,
    scale: ScaleRequested | None = None,
    notice: Notice | None = None,
    max_workers: int | None = None,
    max_shown: int = MAX_WORKERS_SHOWN,
    state: ClusterState | None = None,
    machine: int | None = None,
) -> dict[str, Any]:
    """The cluster part of a snapshot.

    ``adapt`` and ``scale`` are the latest intents: when newer than ``snapshot`` they
    say what the cluster is about to become (adaptive bounds, requested size), so the
    views follow a click at once instead of at the next sample
    (:attr:`ClusterState.adaptive`, :attr:`ClusterState.requested`). A folded
    ``state`` (the bridge's) replaces those four, and also knows when a notice stopped
    holding. ``machine`` is the machine's memory in bytes (by default this machine's,
    for workers that run here: :func:`~scalekit.views.cluster_render.machine_memory`).
    """
    view = state if state is not None else ClusterState(
        snapshot=snapshot, adapt=adapt, scale=scale, notice=notice)
    notice = view.notice
    adaptive = view.adaptive
    totals: dict[str, Any] = {
        "threads": snapshot.total_threads,
        "cpu": _number(snapshot.mean_cpu) or 0.0,
        "cpu_percent": _number(cpu_percent(snapshot)) or 0.0,  # the panel's CPU figure
        "memory": snapshot.total_memory,
        "memory_limit": snapshot.total_memory_limit,
    }
    gpu = _gpu_totals(snapshot)
    if gpu is not None:  # over all workers, also those past ``max_shown``
        totals["gpu"] = gpu
    return {
        "id": cluster_id,
        "backend": snapshot.backend,
        "status": snapshot.status,
        "workers": [worker_dict(w) for w in snapshot.workers[:max_shown]],
        "n_workers": snapshot.n_workers,
        "requested": view.requested,
        "totals": totals,
        "adaptive": (
            None if adaptive is None
            else {"minimum": int(adaptive[0]), "maximum": int(adaptive[1])}
        ),
        "dashboard_link": snapshot.dashboard_link,
        "scheduler_address": snapshot.scheduler_address,
        "max_workers": max_workers,
        "notice": (
            None if notice is None
            else {"level": notice.level, "message": notice.message, "time": notice.time}
        ),
        "time": snapshot.time,
        "view": cluster_view(view, machine),
    }


def run_dict(state: TrainingState) -> dict[str, Any]:
    """The part of a snapshot for one run, from the panels' folded training state."""
    loss_key = state.loss_keys[0] if state.loss_keys else None
    last_row = state.rows[-1] if state.rows else {}
    loss = _number(last_row.get(loss_key)) if loss_key else None
    valid_loss = _number(last_row.get("valid_loss"))
    done = state.epochs_done - state.start_epoch
    total = (state.max_epochs - state.start_epoch) if state.max_epochs else None
    if state.status == "finished":
        progress: float | None = 1.0
    elif total:
        progress = min(max((done + state.batch_fraction) / total, 0.0), 1.0)
    else:
        progress = None
    checkpoint = state.last_checkpoint
    message = state.message.splitlines()[0][:300] if state.message else ""
    return {
        "run_id": state.run_id,
        "status": state.status,
        "epochs_done": state.epochs_done,
        "max_epochs": state.max_epochs,
        "start_epoch": state.start_epoch,
        "batch": list(state.batch) if state.batch is not None else None,
        "progress": progress,
        "loss_key": loss_key,
        "loss": loss,
        "valid_loss": valid_loss if loss_key != "valid_loss" else None,
        "world_size": state.world_size,
        "samples_per_s": _number(state.samples_per_s),
        "eta_s": _number(state.eta_s),
        "last_checkpoint": None if checkpoint is None else {
            "epoch": checkpoint.epoch, "step": checkpoint.step, "url": checkpoint.url,
            "time": checkpoint.time,
        },
        "recoveries": state.recoveries,
        "lost_steps": state.lost_steps,
        "downtime_s": _number(state.downtime_s) or 0.0,
        "peak_gpu_memory": [int(b) for b in state.peak_gpu_memory],
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "message": message,
        "view": run_view(state),
    }
