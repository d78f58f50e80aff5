"""Checks that run in the notebook before anything is shipped to the workers."""

from __future__ import annotations

from typing import Any

from scalekit.errors import UsageError


def check_net(net: Any) -> None:
    """Raise a clear error unless ``net`` is a skorch net."""
    if not hasattr(net, "partial_fit") or not hasattr(net, "initialize"):
        raise UsageError(
            f"expected a skorch net (NeuralNet, NeuralNetClassifier, ...), got "
            f"{type(net).__name__}; for a plain torch module use scalekit.train(...)"
        )


def preflight(net: Any, X: Any, y: Any) -> None:
    """Fail fast, in the notebook, on inputs that cannot train.

    Checks what skorch checks (lengths, types), that the net can be pickled to the
    workers, and that the module accepts a two-sample batch of ``X``.
    """
    import pickle

    from skorch.dataset import get_len

    check_net(net)
    if y is not None:
        try:
            n_x, n_y = get_len(X), get_len(y)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"cannot take the length of X or y: {exc}") from exc
        if n_x != n_y:
            raise UsageError(
                f"X has {n_x} samples but y has {n_y}; they must have the same length"
            )
    from dask import is_dask_collection

    if is_dask_collection(X) or is_dask_collection(y):
        # probe on the first rows only; the whole array is computed on the cluster
        X = X[:2].compute() if is_dask_collection(X) else X
        y = y[:2].compute() if is_dask_collection(y) else y
    from scalekit.training.rank import dumps_by_value

    try:
        shipped = dumps_by_value(net)  # exactly how the net travels to the workers
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"the net cannot be sent to the workers because it cannot be pickled: {exc}. "
            "Define the module class at the top level of a module or notebook cell, and "
            "avoid open files, locks or lambdas in its attributes."
        ) from exc
    _dry_run(shipped, X, y)


def _dry_run(shipped: bytes, X: Any, y: Any) -> None:
    """Run a copy of the module on two samples to catch shape and dtype errors.

    The copy is the net as the workers get it (``shipped``, pickled by value): a
    deep copy would go through skorch's own ``__getstate__``, which pickles the module
    by reference and fails for classes a function or notebook cell defines.
    """
    import cloudpickle
    import numpy as np

    from scalekit.training.data import BatchReader

    probe = cloudpickle.loads(shipped)
    if not getattr(probe, "initialized_", False):
        probe.initialize()
    dataset = probe.get_dataset(X, y)
    n = min(2, len(dataset))
    if n == 0:
        raise UsageError("X has no samples")
    batch = BatchReader(dataset).read(np.arange(n))
    try:
        y_pred = probe.evaluation_step(batch, training=False)
        if y is not None:
            probe.get_loss(y_pred, batch[1], X=batch[0], training=False)
    except Exception as exc:
        raise UsageError(
            f"the module failed on a {n}-sample batch of X before training started: "
            f"{type(exc).__name__}: {exc}. Check the module's input size and the dtypes "
            "of X and y (float32 inputs; int64 class labels for a classifier)."
        ) from exc


def batch_size(net: Any) -> int:
    """The net's (global) training batch size."""
    return int(net.get_params_for("iterator_train").get("batch_size", net.batch_size))


def n_samples(X: Any) -> int:
    from skorch.dataset import get_len

    try:
        return int(get_len(X))
    except Exception:
        return 0


def checked_fit_arguments(checkpoint: Any, resume: Any, max_world: Any
                          ) -> tuple[Any, bool, Any]:
    """``sk.fit``'s checkpoint, resume and max_workers, validated like config fields."""
    import os

    from scalekit.errors import ConfigError
    from scalekit.training.checkpoint import CheckpointStore

    if checkpoint is True:
        raise ConfigError(
            "checkpoint", True, "a folder path or fsspec URL, False (no checkpoints) or "
            "None (a fresh folder per run)",
            "Leave it out for the default folder, or name one: checkpoint='./ckpt/run1'.")
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if not (checkpoint is None or checkpoint is False or isinstance(checkpoint, str)
            or isinstance(checkpoint, CheckpointStore)):
        raise ConfigError("checkpoint", checkpoint,
                          "a folder path or fsspec URL, False or None")
    if isinstance(checkpoint, str) and not checkpoint.strip():
        raise ConfigError("checkpoint", checkpoint, "a non-empty folder path or URL")
    if not isinstance(resume, bool):
        raise ConfigError("resume", resume, "True or False")
    if max_world is not None and (not isinstance(max_world, int) or isinstance(max_world, bool)
                                  or max_world < 1):
        raise ConfigError("max_workers", max_world, "an integer >= 1, or None for every worker",
                          "It caps the world size of the fit; the cluster keeps its workers.")
    return checkpoint, resume, max_world
