"""Where each skorch callback of a distributed fit runs: the rule, the table, the marks.

The rule (docs/callbacks.md argues it):

* a callback that **decides** the training runs on **every rank**, in lock-step, with the
  same inputs (scoring, ``EarlyStopping``, LR schedulers, ``GradientNormClipping``,
  parameter freezers): each rank must take the same decision, or the ranks diverge or
  wait for each other forever;
* a callback whose job is a **side effect** runs **once, on rank 0** (``PrintLog``,
  ``ProgressBar``, ``Checkpoint``, ``TrainEndCheckpoint``, ``TensorBoard`` and the
  experiment trackers): run everywhere, it would write every file and every log line
  once per rank;
* a callback that **configures the net before training** (``LoadInitState``,
  ``InputShapeSetter``) runs **once, in the notebook**, before the first round: the
  state it sets travels to every rank with the net;
* a callback scalekit does not know runs on **every rank**: that cannot desynchronise
  the ranks, while running a callback that decides something on rank 0 alone can hang or
  diverge the fit. Mark a side-effect callback with :func:`on_rank_zero`.

Among rank-0 callbacks, *loggers* (the default) report each epoch once: after a
recovery, the epochs that are trained again are not logged again. *State writers*
(``Checkpoint``, ``TrainEndCheckpoint``; ``on_rank_zero(cb, redo_epochs=True)``) run
again for those epochs, so what they wrote matches the model the fit ends with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from scalekit.training.enums import StrEnum

T = TypeVar("T")

# the marks a callback may carry: a class declares them as class attributes; an instance
# gets them with a trailing "_" (some callbacks pass their other attributes on, e.g.
# LRScheduler's to its scheduler, and skip those)
RANK_ZERO_ONLY = "rank_zero_only"  # True: rank 0 only; False: every rank
REDO_EPOCHS = "redo_epochs"  # a rank-0 callback: run again for epochs redone after a recovery


def _mark(callback: Any, name: str, default: Any = None) -> Any:
    found = vars(callback).get(name + "_", None) if hasattr(callback, "__dict__") else None
    return found if found is not None else getattr(type(callback), name, default)


class Where(StrEnum):
    """Where a callback runs during ``sk.fit``."""

    EVERY_RANK = "every rank"
    RANK_ZERO = "rank 0"
    NOTEBOOK = "notebook"  # on_train_begin once, before the first round; no-ops on ranks


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one callback runs, and why.

    Attributes
    ----------
    where : Where
    redo_epochs : bool
        A rank-0 callback that runs again for epochs redone after a recovery (a state
        writer); ``False`` for loggers, which report each epoch once.
    reason : str
        "marked", "built-in: <class>", or "default".
    """

    where: Where
    redo_epochs: bool = False
    reason: str = "default"

    @property
    def rank_zero(self) -> bool:
        return self.where is Where.RANK_ZERO

    @property
    def logger(self) -> bool:
        """A rank-0 callback that reports each epoch once."""
        return self.rank_zero and not self.redo_epochs


# skorch's callbacks by class name (and scalekit's own); subclasses inherit the entry.
# (module, class) -> (where, redo_epochs)
BUILT_IN: dict[tuple[str, str], tuple[Where, bool]] = {
    ("skorch.callbacks", "PrintLog"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "ProgressBar"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "TensorBoard"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "MlflowLogger"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "WandbLogger"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "NeptuneLogger"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "SacredLogger"): (Where.RANK_ZERO, False),
    ("skorch.callbacks", "Checkpoint"): (Where.RANK_ZERO, True),
    ("skorch.callbacks", "TrainEndCheckpoint"): (Where.RANK_ZERO, True),
    ("skorch.callbacks", "LoadInitState"): (Where.NOTEBOOK, False),
    ("skorch.callbacks", "InputShapeSetter"): (Where.NOTEBOOK, False),
    ("skorch.callbacks", "EpochTimer"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "BatchScoring"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "EpochScoring"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "PassthroughScoring"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "EarlyStopping"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "LRScheduler"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "GradientNormClipping"): (Where.EVERY_RANK, False),
    ("skorch.callbacks", "ParamMapper"): (Where.EVERY_RANK, False),
    ("scalekit.training.callbacks", "RoundControl"): (Where.EVERY_RANK, False),
}


def _built_in_classes() -> list[tuple[type, Where, bool]]:
    import importlib

    found = []
    for (module, name), (where, redo) in BUILT_IN.items():
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # an older skorch without it
            continue
        found.append((cls, where, redo))
    return found


def placement(callback: Any) -> Placement:
    """Where ``callback`` (an instance) runs during ``sk.fit``, and why.

    A mark (set by :func:`on_rank_zero` or :func:`on_every_rank`, or declared on the
    class as ``rank_zero_only = True`` and ``redo_epochs = ...``) wins; then the built-in
    table (the most specific class in the callback's MRO); else every rank.
    """
    marked = _mark(callback, RANK_ZERO_ONLY)
    if marked is not None:
        where = Where.RANK_ZERO if marked else Where.EVERY_RANK
        return Placement(where, bool(_mark(callback, REDO_EPOCHS, False)) and bool(marked),
                         "marked")
    table = {cls: (where, redo) for cls, where, redo in _built_in_classes()}
    for cls in type(callback).__mro__:
        if cls in table:
            where, redo = table[cls]
            redo = bool(_mark(callback, REDO_EPOCHS, redo))
            return Placement(where, redo and where is Where.RANK_ZERO,
                             f"built-in: {cls.__name__}")
    return Placement(Where.EVERY_RANK)


def on_rank_zero(callback: T, *, redo_epochs: bool = False) -> T:
    """Run ``callback`` once, on rank 0 only (a side effect: a file, a log, a tracker).

    Works on an instance (``on_rank_zero(MyLogger())``) and on a class, as a decorator
    (``@on_rank_zero``); returns its argument. A mark on a class survives
    ``sklearn.clone``; one on an instance does not (clone rebuilds callbacks from their
    parameters).

    Parameters
    ----------
    callback : skorch callback instance or class
    redo_epochs : bool
        ``False`` (a logger): each epoch is reported once; epochs trained again after a
        recovery are not reported again. ``True`` (a state writer, e.g. a file that must
        match the final model): it runs again for those epochs.
    """
    if isinstance(callback, type):
        setattr(callback, RANK_ZERO_ONLY, True)
        setattr(callback, REDO_EPOCHS, bool(redo_epochs))
        return callback
    vars(callback)[RANK_ZERO_ONLY + "_"] = True
    vars(callback)[REDO_EPOCHS + "_"] = bool(redo_epochs)
    return callback


def on_every_rank(callback: T) -> T:
    """Run ``callback`` on every rank, in lock-step (e.g. a subclass of a built-in
    side-effect callback that also decides something). Instance or class; returns it."""
    if isinstance(callback, type):
        setattr(callback, RANK_ZERO_ONLY, False)
        return callback
    vars(callback)[RANK_ZERO_ONLY + "_"] = False
    return callback


def placements(net: Any) -> dict[str, Placement]:
    """Where each of ``net.callbacks_`` runs (an initialized net), by callback name."""
    return {name: placement(cb) for name, cb in getattr(net, "callbacks_", [])}


__all__ = ["Placement", "Where", "on_every_rank", "on_rank_zero", "placement", "placements"]
