"""The callbacks' part of a fit that happens in the notebook, before any round.

* Callbacks that configure the net before training (``LoadInitState``,
  ``InputShapeSetter``: :data:`.callback_rules.Where.NOTEBOOK`) run their
  ``on_train_begin`` here, once: the weights, optimizer state and history that
  ``LoadInitState`` loads from skorch's checkpoint files (written by rank 0 where the
  notebook can read them) then travel to every rank with the net. On the ranks they find
  their work done (``did_load_``, the input size already set), in every round.
* Each callback must travel to the workers: one that cannot be pickled is named, with
  the attribute that fails, before anything is sent.
* An ``MlflowLogger`` must have found its run.
"""

from __future__ import annotations

from typing import Any

from scalekit.errors import UsageError
from scalekit.training.callback_rules import Where, placement


def prepare_in_notebook(net: Any, X: Any, y: Any) -> None:
    """Run the notebook's share of ``net``'s callbacks (an initialized net) and check
    that the rest can travel; raise :class:`UsageError` naming what cannot."""
    from scalekit.training.tracking import check_mlflow_run

    for name, callback in net.callbacks_:
        check_picklable(name, callback)
        check_mlflow_run(name, callback)
    for _, callback in net.callbacks_:
        if placement(callback).where is Where.NOTEBOOK:
            callback.on_train_begin(net, X=X, y=y)


def check_picklable(name: str, callback: Any) -> None:
    """Raise a :class:`UsageError` naming ``callback``'s attribute that cannot be sent
    to the workers (pickled by value, as the net travels)."""
    from scalekit.training.tracking import dumps_by_value

    try:
        dumps_by_value(callback)
        return
    except Exception as exc:  # pickling raises TypeError, PicklingError, AttributeError...
        error = exc
    culprit = ""
    for attr, value in sorted(vars(callback).items()):
        try:
            dumps_by_value(value)
        except Exception as exc:
            culprit = f" Its attribute {attr!r} ({type(value).__name__}) fails: {exc}."
            break
    raise UsageError(
        f"callback {name!r} ({type(callback).__name__}) cannot be sent to the workers: it "
        f"cannot be pickled ({type(error).__name__}: {error}).{culprit} Every callback "
        "travels to the workers with the net: create open files, locks, clients and "
        "threads in its on_train_begin(), which runs on the workers, not in __init__ or "
        "initialize(), which run in the notebook (docs/callbacks.md)."
    ) from error


__all__ = ["check_picklable", "prepare_in_notebook"]
