"""The state of a net's skorch callbacks, captured and restored across rounds.

A round is a fresh copy of the net on each rank, and skorch's ``on_train_begin``
resets what callbacks learned (``EarlyStopping``'s patience counter and best score,
``PassthroughScoring``'s best, ``PrintLog``'s "header printed"). So the training state
(:mod:`.state`) carries every callback's state, and :class:`.callbacks.RoundControl`,
which runs last, puts it back after the other callbacks' ``on_train_begin``.

What is captured, per callback name:

* a callback with ``state_dict()`` and ``load_state_dict(state)`` (the torch and
  Lightning protocol): what ``state_dict()`` returns; it must be plain data (numbers,
  strings, tensors, lists and dicts of them), as every checkpoint loads with
  ``torch.load(weights_only=True)``;
* otherwise its learned scalars: attributes ending in ``_`` (skorch's convention) whose
  value is a number, a string, a bool or ``None``, plus a few named in :data:`EXTRA`.
  Objects (writers, clients, LR schedulers: see ``state.restore_schedulers``) are left
  to the callback's ``initialize``/``on_train_begin``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from scalekit.errors import UsageError

# class name -> attributes to capture besides the learned scalars
EXTRA: dict[str, tuple[str, ...]] = {
    "EarlyStopping": ("best_model_weights_",),  # load_best=True: the best weights so far
    "MlflowLogger": ("_batch_count",),  # the step of batch-level metrics
}
SKIP = frozenset({"scalekit_round"})  # scalekit's own RoundControl
PROTOCOL = "state_dict"
ATTRS = "attrs"


class CallbackStateError(UsageError, TypeError):
    """A callback's ``state_dict()`` returned something a checkpoint cannot hold."""


def capture(net: Any, names: Iterable[str] | None = None, *, json_safe: bool = False
            ) -> dict[str, dict[str, Any]]:
    """``{callback name: its state}`` for ``net.callbacks_`` (or only ``names``).

    ``json_safe`` keeps only what travels as JSON (no tensors): the loggers' state that
    rank 0 sends with each epoch's report.
    """
    wanted = None if names is None else set(names)
    out: dict[str, dict[str, Any]] = {}
    for name, callback in getattr(net, "callbacks_", []):
        if name in SKIP or (wanted is not None and name not in wanted):
            continue
        state = _state_of(name, callback, json_safe=json_safe)
        if state:
            out[name] = state
    return out


def restore(net: Any, saved: Mapping[str, Any] | None, names: Iterable[str] | None = None
            ) -> list[str]:
    """Put ``saved`` (from :func:`capture`) back into ``net.callbacks_`` (or only into
    ``names``); returns the names restored."""
    if not saved:
        return []
    wanted = None if names is None else set(names)
    done = []
    for name, callback in getattr(net, "callbacks_", []):
        state = saved.get(name)
        if state is None or (wanted is not None and name not in wanted):
            continue
        if PROTOCOL in state and callable(getattr(callback, "load_state_dict", None)):
            callback.load_state_dict(state[PROTOCOL])
        for attr, value in (state.get(ATTRS) or {}).items():
            vars(callback)[attr] = value
        done.append(name)
    return done


def _state_of(name: str, callback: Any, *, json_safe: bool) -> dict[str, Any]:
    if callable(getattr(callback, "state_dict", None)) \
            and callable(getattr(callback, "load_state_dict", None)):
        value = callback.state_dict()
        if not _is_plain(value, tensors=not json_safe):
            if json_safe:
                return {}
            raise CallbackStateError(
                f"callback {name!r} ({type(callback).__name__}): state_dict() must return "
                "numbers, strings, tensors, and lists and dicts of them (checkpoints load "
                f"with torch.load(weights_only=True)); got {type(value).__name__}")
        return {PROTOCOL: _cpu(value)}
    attrs: dict[str, Any] = {}
    extra = {a for cls in type(callback).__mro__ for a in EXTRA.get(cls.__name__, ())}
    for attr, value in vars(callback).items():
        if attr in extra:
            if value is not None and _is_plain(value, tensors=not json_safe):
                attrs[attr] = _cpu(value)
            elif value is None:
                attrs[attr] = None
            continue
        if attr.endswith("_") and not attr.startswith("_") and _is_scalar(value):
            attrs[attr] = value.item() if isinstance(value, np.generic) else value
    return {ATTRS: attrs} if attrs else {}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, str, numbers.Number, np.generic)) \
        and not isinstance(value, complex)


def _is_plain(value: Any, *, tensors: bool) -> bool:
    if _is_scalar(value):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v, tensors=tensors)
                   for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, tensors=tensors) for v in value)
    return tensors and type(value).__name__ == "Tensor" and hasattr(value, "detach")


def _cpu(value: Any) -> Any:
    """Plain containers (dicts, lists), scalars as Python numbers, tensors as CPU
    copies: the training state keeps running while it is saved."""
    if isinstance(value, Mapping):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cpu(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "detach"):
        return value.detach().cpu().clone()
    return value


__all__ = ["CallbackStateError", "capture", "restore"]
