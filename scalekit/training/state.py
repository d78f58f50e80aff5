"""The training state that moves between rounds and into checkpoints.

One plain dict (tensors, numbers, strings, lists, dicts: loadable with
``torch.load(weights_only=True)``) describes where training stands::

    {"format": 1, "module": ..., "optimizer": ..., "criterion": ..., "history": [...],
     "epoch": 4,        # epochs completed
     "step": 120,       # steps completed in epoch 5 (0 at an epoch boundary)
     "world_size": 2, "seed": 0, "run_id": "...",
     "lr_schedulers": {...},  # skorch LRScheduler callbacks, by callback name
     "callbacks": {...},  # what the callbacks learned, by name (callback_state)
     "rng": <torch RNG state>, "config": {...},  # the run's settings
     "grad_scaler": {...},  # fp16 runs: the loss scale reached (else None)
     "data": {...}}  # sharded data inside an epoch: that epoch's deal (else None)

Model and optimizer state are float32 whatever the training precision (autocast and
FSDP's mixed precision keep float32 master weights), on the CPU, so a state saved by a
GPU run in bf16 loads into a CPU run in float32 and the other way round.

When ``step > 0`` the last history row is the unfinished epoch, with its batches so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalekit.training import callback_state

FORMAT = 1


def capture(net: Any, model: Any, *, epoch: int, step: int, world_size: int, seed: int,
            run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state of ``net`` (whose bare or sharded module is ``model``) as a plain dict.

    Model and optimizer state are *full* (unsharded) and keyed by parameter name, so a
    state captured under one strategy or world size loads under any other. With a
    sharded model this is a collective: every rank calls it; rank 0 gets the result.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    criterion = getattr(net, "criterion_", None)
    return {
        # copies: the live model keeps training while a state is saved or sent
        "module": _clone(get_model_state_dict(model, options=options)),
        "optimizer": _clone(get_optimizer_state_dict(model, net.optimizer_, options=options)),
        "criterion": cpu_state(criterion.state_dict())
        if criterion is not None and hasattr(criterion, "state_dict") else None,
        **capture_meta(net, epoch=epoch, step=step, world_size=world_size, seed=seed,
                       run_id=run_id, config=config),
    }


def capture_meta(net: Any, *, epoch: int, step: int, world_size: int, seed: int, run_id: str,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything but the model and optimizer (those go to a sharded checkpoint)."""
    import torch

    return {
        "format": FORMAT, "history": plain(list(net.history)), "epoch": int(epoch),
        "step": int(step), "world_size": int(world_size), "seed": int(seed),
        "run_id": str(run_id),
        "lr_schedulers": _scheduler_states(net),
        "callbacks": callback_state.capture(net),
        "rng": torch.get_rng_state(),
        "config": plain(dict(config or {})),
        "grad_scaler": _scaler_state(net),
        "data": _data_position(net),  # sharded mode: the epoch's deal (else None)
    }


def _data_position(net: Any) -> dict[str, Any] | None:
    from scalekit.training.shard_feed import data_position

    return data_position(net)


def _scaler_state(net: Any) -> dict[str, Any] | None:
    scaler = net.__dict__.get("_sk_scaler")
    return plain(scaler.state_dict()) if scaler is not None else None


def _scheduler_states(net: Any) -> dict[str, Any]:
    """State of the LR schedulers that skorch's ``LRScheduler`` callbacks hold."""
    states = {}
    for name, callback in getattr(net, "callbacks_", []):
        scheduler = getattr(callback, "lr_scheduler_", None)
        if scheduler is not None and hasattr(scheduler, "state_dict"):
            states[name] = plain(scheduler.state_dict())
    return states


def restore_schedulers(net: Any, state: dict[str, Any] | None) -> None:
    """Load saved LR-scheduler states into the net's callbacks (after ``on_train_begin``
    created their schedulers)."""
    saved = (state or {}).get("lr_schedulers") or {}
    for name, callback in getattr(net, "callbacks_", []):
        scheduler = getattr(callback, "lr_scheduler_", None)
        if name in saved and scheduler is not None:
            scheduler.load_state_dict(saved[name])
            # skorch re-creates the scheduler with last_epoch=len(history)-1, and the
            # constructor takes one more step; put back the rates of the saved moment
            last = getattr(scheduler, "_last_lr", None)
            if last:
                for group, lr in zip(scheduler.optimizer.param_groups, last, strict=False):
                    group["lr"] = lr


def _clone(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    return tree.detach().clone() if hasattr(tree, "detach") else tree


def restore(net: Any, state: dict[str, Any], *, optimizer: bool = True
            ) -> list[dict[str, Any]] | None:
    """Load ``state`` into an initialized, unsharded ``net``.

    Returns the batches recorded so far in the unfinished epoch (``None`` at an epoch
    boundary); the history keeps only complete epochs. ``optimizer=False`` leaves the
    optimizer for :func:`load_optimizer` (after a sharded strategy rebuilt it).
    """
    from skorch.history import History

    if state.get("format") != FORMAT:
        raise ValueError(f"unknown training-state format {state.get('format')!r}")
    if state.get("module") is not None:
        net.module_.load_state_dict(state["module"])
    if optimizer:
        load_optimizer(net.module_, net.optimizer_, state)
    if state.get("criterion") and hasattr(net.criterion_, "load_state_dict"):
        net.criterion_.load_state_dict(state["criterion"])
    rows = [dict(r) for r in state.get("history") or []]
    partial = None
    if state.get("step", 0) > 0 and len(rows) > state["epoch"]:
        partial = list(rows[state["epoch"]].get("batches", []))
    net.history_ = History(rows[: state["epoch"]])
    return partial


def load_optimizer(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load the name-keyed full optimizer state of ``state`` into ``optimizer``.

    A sharded model gets it through ``set_optimizer_state_dict`` (which shards it);
    a plain one by mapping names back to the optimizer's parameter positions.
    """
    saved = state.get("optimizer")
    if not saved:
        return
    if any(hasattr(p, "to_local") for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, saved,
                                 options=StateDictOptions(full_state_dict=True))
        return
    names = {id(p): n for n, p in model.named_parameters()}
    position: dict[str, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            position[names[id(p)]] = len(position)
    groups = [
        {**g, "params": [position[n] for n in g["params"]]} for g in saved["param_groups"]
    ]
    optimizer.load_state_dict({
        "state": {position[n]: v for n, v in saved["state"].items()},
        "param_groups": groups,
    })


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
