"""The training state that moves between rounds and into checkpoints.

One plain dict (tensors, numbers, strings, lists, dicts: loadable with
``torch.load(weights_only=True)``) describes where training stands::

    {"format": 1, "module": ..., "optimizer": ..., "criterion": ..., "history": [...],
     "epoch": 4,        # epochs completed
     "step": 120,       # steps completed in epoch 5 (0 at an epoch boundary)
     "world_size": 2, "seed": 0, "run_id": "...", "lr_schedulers": {...}}

When ``step > 0`` the last history row is the unfinished epoch, with its batches so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = 1


def capture(net: Any, module: Any, *, epoch: int, step: int, world_size: int, seed: int,
            run_id: str) -> dict[str, Any]:
    """The state of ``net`` (whose bare module is ``module``) as a plain dict."""
    criterion = getattr(net, "criterion_", None)
    return {
        "format": FORMAT,
        "module": cpu_state(module.state_dict()),
        "optimizer": net.optimizer_.state_dict(),
        "criterion": cpu_state(criterion.state_dict())
        if criterion is not None and hasattr(criterion, "state_dict") else None,
        "history": plain(list(net.history)),
        "epoch": int(epoch),
        "step": int(step),
        "world_size": int(world_size),
        "seed": int(seed),
        "run_id": str(run_id),
    }


def restore(net: Any, state: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Load ``state`` into an initialized ``net``.

    Returns the batches recorded so far in the unfinished epoch (``None`` at an epoch
    boundary); the history keeps only complete epochs.
    """
    from skorch.history import History

    if state.get("format") != FORMAT:
        raise ValueError(f"unknown training-state format {state.get('format')!r}")
    net.module_.load_state_dict(state["module"])
    if state.get("optimizer") is not None:
        net.optimizer_.load_state_dict(state["optimizer"])
    if state.get("criterion") and hasattr(net.criterion_, "load_state_dict"):
        net.criterion_.load_state_dict(state["criterion"])
    rows = [dict(r) for r in state.get("history") or []]
    partial = None
    if state.get("step", 0) > 0 and len(rows) > state["epoch"]:
        partial = list(rows[state["epoch"]].get("batches", []))
    net.history_ = History(rows[: state["epoch"]])
    return partial


def cpu_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() if hasattr(v, "detach") else v for k, v in state.items()}


def plain(value: Any) -> Any:
    """Numbers, strings, lists and dicts only (numpy scalars become Python ones)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
