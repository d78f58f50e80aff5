"""scikit-learn Pipelines whose last step is a skorch net: the transformers are fitted
where the data is, the net is trained distributed.

* In-memory data: the transformers are fitted in the notebook (as ``Pipeline.fit``
  would) and the net trains on their output.
* Sharded data (files, Dask collections): the transformers are fitted on the cluster,
  *partition-wise*: one task per shard, run where the shard lives (Dask partitions) or on
  any worker (files), each task reading its shard, applying the transformers fitted so
  far and calling ``partial_fit`` -- the transformer travels from shard to shard, the
  data never moves. The ranks then apply the fitted transformers to each window they
  read. Transformers without ``partial_fit`` (``PCA``, ...) cannot be fitted this way
  and are refused, unless they need no fitting (``FunctionTransformer``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from scalekit.data.sources import DataError, ShardedSource

if TYPE_CHECKING:
    from distributed import Client


def is_pipeline(obj: Any) -> bool:
    from sklearn.pipeline import Pipeline

    return isinstance(obj, Pipeline)


def split_pipeline(pipe: Any) -> tuple[Any, Any]:
    """``(transformers, net)``: the pipeline's steps before its last one (``None`` when
    there are none), and the skorch net that ends it."""
    steps = pipe.steps
    net = steps[-1][1]
    if not hasattr(net, "partial_fit") or not hasattr(net, "initialize"):
        raise DataError(f"the pipeline's last step must be a skorch net, got "
                        f"{type(net).__name__}")
    if len(steps) == 1:
        return None, net
    return pipe[:-1], net


def fit_in_memory(transformers: Any, X: Any, y: Any) -> Any:
    """Fit the transformers on in-memory data in the notebook; return ``X`` transformed."""
    Xt = transformers.fit_transform(X, y)
    return np.asarray(Xt, dtype=np.float32) if isinstance(Xt, np.ndarray) else Xt


def fit_on_cluster(transformers: Any, source: ShardedSource, client: Client,
                   futures: list[Any] | None = None) -> Any:
    """Fit ``transformers`` (a Pipeline of them) partition-wise on the cluster; return it
    fitted. Each transformer's fit visits every shard in turn, on the worker that holds
    it (Dask partitions) or where the scheduler puts the task (files)."""
    steps = list(transformers.steps)
    for name, step in steps:
        if not hasattr(step, "partial_fit") and _requires_fit(step):
            raise DataError(
                f"step {name!r} ({type(step).__name__}) has no partial_fit, so it cannot be "
                "fitted shard by shard on the cluster; use one that has (StandardScaler, "
                "MinMaxScaler, MaxAbsScaler, IncrementalPCA, ...), or fit it in the notebook "
                "on a sample and put it fitted into a FunctionTransformer")
    fitted: list[tuple[str, Any]] = []
    where = _holders(source, client)
    for name, step in steps:
        state = client.scatter(copy.deepcopy(step), hash=False)  # travels shard to shard
        prefix = _pipeline(fitted)
        if not _requires_fit(step):
            state = client.submit(_fit_on_shard, state, source, 0, prefix, False,
                                  pure=False)
        else:
            for i in range(len(source.shards)):
                # on the shard's worker when it has one (the task may move if it left)
                place = ({"workers": where[i], "allow_other_workers": True} if i in where
                         else {})
                state = client.submit(_fit_on_shard, state, source, i, prefix, True,
                                      pure=False, **place)
        fitted.append((name, state.result()))
    return _pipeline(fitted)


def _pipeline(steps: list[tuple[str, Any]]) -> Any:
    from sklearn.pipeline import Pipeline

    return Pipeline(steps) if steps else None


def _requires_fit(step: Any) -> bool:
    tags = getattr(step, "__sklearn_tags__", None)
    if tags is None:
        return True
    try:
        return bool(tags().requires_fit)
    except Exception:
        return True


def _holders(source: ShardedSource, client: Client) -> dict[int, list[str]]:
    """The worker holding each Dask partition (nothing for files)."""
    keys = [s.ref for s in source.shards]
    if source.kind != "dask" or not keys:
        return {}
    who = client.who_has()
    return {i: list(who.get(k, ())) for i, k in enumerate(keys) if who.get(k)}


def _fit_on_shard(step: Any, source: ShardedSource, index: int, prefix: Any,
                  partial: bool) -> Any:
    """Read shard ``index`` here, transform it by the steps fitted before, and fit
    ``step`` a little further on it (a Dask task)."""
    try:
        X, y = source.read(index)
    finally:
        source.forget()
    if prefix is not None:
        X = prefix.transform(X)
    if partial:
        step.partial_fit(X, y)
    else:
        step.fit(X[: min(len(X), 2)], None if y is None else y[:2])
    return step
