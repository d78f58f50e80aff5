"""Dask collections as a sharded source: partitions computed on the cluster, each read by
a rank where it already lives.

``dask.array`` (X, and y with matching row chunks) and ``dask.dataframe`` (a frame and
a series, or one frame with feature and target column names) are turned into one task
per partition that yields ``(X, y)`` as numpy arrays; :meth:`DaskSource.materialize`
computes those on the cluster (the notebook gets only their row counts), and the deal
gives each rank the partitions its own worker holds (:func:`scalekit.data.deal.deal`
with locality). Nothing is replicated: a rank reads a partition held elsewhere only
when the shares do not line up, one at a time, and drops it after use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scalekit.data.sources import DataError, Shard, ShardedSource

if TYPE_CHECKING:
    from distributed import Client, Future


class DaskSource(ShardedSource):
    """Dask collections, one shard per partition.

    Parameters
    ----------
    X : dask.array.Array or dask.dataframe.DataFrame
        Features (rows along the first axis). A frame with ``features`` picks columns.
    y : dask.array.Array or dask.dataframe.Series, optional
        Labels, partitioned like ``X`` (a frame can instead name its ``target``).
    features : sequence of str, optional
        Columns of a frame ``X`` that make the features (default: every column but
        ``target``).
    target : str, optional
        The label column of a frame ``X``.
    window, prefetch, dtype :
        As for :class:`~scalekit.data.sources.ParquetSource`.
    """

    kind = "dask"

    def __init__(self, X: Any, y: Any = None, *, features: Sequence[str] | None = None,
                 target: str | None = None, window: int = 1, prefetch: int = 1,
                 dtype: str = "float32") -> None:
        from scalekit.data.sources import _window

        self.window, self.prefetch, self.dtype = _window(window, prefetch), prefetch, dtype
        self.keys: tuple[Any, ...] = ()
        self.dataset = ""  # the published name of the computed partitions' futures
        self._futures: list[Any] | None = None  # those futures, here (a worker's copy)
        self._parts = _partitions(X, y, features, target, dtype)
        self._probe_of = (X, y, features, target)
        self.n_features = _width(X, features, target)
        self.estimated_nbytes = _estimate(X, y, self.n_features, dtype)

    def __getstate__(self) -> dict[str, Any]:
        # the graph stays in the notebook; ranks need only the computed keys
        state = dict(self.__dict__)
        state["_parts"] = None
        state["_probe_of"] = None
        state["_futures"] = None
        return state

    def materialize(self, client: Client) -> list[Future]:
        """Compute every partition on the cluster; return their futures (hold them for
        as long as the fit runs). The notebook receives row counts only."""
        if self._parts is None:
            raise DataError("this Dask source was already sent to the workers; build a new "
                            "one from the collection")
        import uuid

        futures = client.compute(self._parts)
        # published: a rank gets futures the scheduler keeps it informed about (a bare
        # Future(key) made on a worker would wait for news that never comes)
        self.dataset = f"scalekit-shards-{uuid.uuid4().hex[:12]}"
        client.publish_dataset(futures, name=self.dataset)
        self._futures = futures
        shapes = client.gather(client.map(_shape, futures, pure=False))
        row_bytes = self.n_features * np.dtype(self.dtype).itemsize
        self.keys = tuple(f.key for f in futures)
        self.shards = tuple(
            Shard(rows=rows, nbytes=rows * row_bytes + ybytes, ref=f.key, label=f"partition {i}")
            for i, (f, (rows, ybytes)) in enumerate(zip(futures, shapes, strict=True)))
        if not self.n_rows:
            raise DataError("the Dask collection has no rows")
        return futures

    def release(self, client: Client) -> None:
        """Forget the computed partitions (the caller releases its futures)."""
        if self.dataset:
            try:
                client.unpublish_dataset(self.dataset)
            except KeyError:
                pass
        self._futures = None

    def forget(self) -> None:
        self._futures = None  # the scheduler may release the partitions after the fit

    def futures(self) -> list[Any]:
        """The partitions' futures in this process (fetched once per process)."""
        if self._futures is None:
            from distributed import get_client

            self._futures = list(get_client().get_dataset(self.dataset))
        return self._futures

    @property
    def nbytes(self) -> int:
        return super().nbytes if self.shards else self.estimated_nbytes

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        from distributed import get_worker

        key = self.shards[index].ref
        try:
            data = get_worker().data
            if key in data:  # it lives here: no copy, no transfer
                return data[key]
        except ValueError:  # not on a worker (a test, the notebook)
            pass
        return self.futures()[index].result()

    def probe(self, n: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
        X, y, features, target = self._probe_of or (None, None, None, None)
        if X is None:
            return super().probe(n)
        head = _pack(*_head(X, y, n), features, target, self.dtype)
        return head

    def check_readable(self) -> None:
        """Partitions are read through Dask: nothing to check per worker."""

    def locality(self, workers: Sequence[str]) -> list[int]:
        """For each shard, the rank (index in ``workers``) whose worker holds it, or -1."""
        from distributed import get_client

        who = get_client().who_has(self.futures())
        rank = {w: r for r, w in enumerate(workers)}
        out = []
        for k in self.keys:
            holders = [rank[w] for w in who.get(k, ()) if w in rank]
            out.append(min(holders) if holders else -1)
        return out

    def describe(self) -> str:
        text = super().describe()
        return text if self.shards else text.replace("0 shards", "partitions not computed yet")


def is_dask(data: Any) -> bool:
    from dask import is_dask_collection

    return is_dask_collection(data)


def _width(X: Any, features: Sequence[str] | None, target: str | None) -> int:
    columns = getattr(X, "columns", None)
    if columns is not None:
        return len(_feature_columns(list(columns), features, target))
    shape = X.shape[1:]
    if any(np.isnan(s) for s in shape):
        raise DataError("the Dask array's feature dimensions are unknown")
    return int(np.prod(shape)) if shape else 1


def _estimate(X: Any, y: Any, width: int, dtype: str) -> int:
    """Bytes of the data in memory as the ranks hold it, known before computing (a frame's
    row count takes one pass over its partitions, which keeps nothing)."""
    rows = X.shape[0]
    if isinstance(rows, float) and np.isnan(rows) or not isinstance(rows, (int, np.integer)):
        rows = int(X.map_partitions(len).sum().compute())
    y_item = np.dtype(y.dtype).itemsize if y is not None and hasattr(y, "dtype") else 8
    return int(rows) * (width * np.dtype(dtype).itemsize + y_item)


def _feature_columns(columns: list[str], features: Sequence[str] | None,
                     target: str | None) -> list[str]:
    if features is None:
        return [c for c in columns if c != target]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"the frame has no column(s) {missing}; its columns are {columns}")
    return list(features)


def _partitions(X: Any, y: Any, features: Sequence[str] | None, target: str | None,
                dtype: str) -> list[Any]:
    """One delayed ``(X, y)`` per partition."""
    import dask

    pack = dask.delayed(_pack, pure=True)
    columns = getattr(X, "columns", None)
    if columns is not None:  # a dask dataframe
        if target is not None and target not in list(columns):
            raise DataError(f"the frame has no target column {target!r}; its columns are "
                            f"{list(columns)}")
        _feature_columns(list(columns), features, target)
        xs = X.to_delayed()
        if y is None:
            return [pack(p, None, features, target, dtype) for p in xs]
        ys = y.to_delayed()
        if len(ys) != len(xs):
            raise DataError(f"X has {len(xs)} partitions but y has {len(ys)}: partition them "
                            "alike (y = frame[column] of the same frame)")
        return [pack(p, q, features, target, dtype) for p, q in zip(xs, ys, strict=True)]
    if X.ndim > 1 and len(X.chunks[1:]) and any(len(c) > 1 for c in X.chunks[1:]):
        X = X.rechunk({i: -1 for i in range(1, X.ndim)})  # whole rows in each block
    xs = [b for b in X.to_delayed().reshape(-1)]
    if y is None:
        return [pack(b, None, None, None, dtype) for b in xs]
    if getattr(y, "columns", None) is None and hasattr(y, "chunks"):
        if y.shape[0] != X.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        y = y.rechunk({0: X.chunks[0]})  # y's rows with X's
        ys = list(y.to_delayed().reshape(-1)) if y.ndim == 1 else \
            [b for b in y.rechunk({i: -1 for i in range(1, y.ndim)}).to_delayed().reshape(-1)]
    else:
        ys = list(y.to_delayed())
        if len(ys) != len(xs):
            raise DataError(f"X has {len(xs)} blocks but y has {len(ys)} partitions")
    return [pack(b, q, None, None, dtype) for b, q in zip(xs, ys, strict=True)]


def _pack(X: Any, y: Any, features: Sequence[str] | None, target: str | None,
          dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A partition as numpy ``(X, y)`` (runs on a worker)."""
    if hasattr(X, "columns"):  # a pandas frame
        columns = _feature_columns(list(X.columns), features, target)
        if y is None and target is not None:
            y = X[target]
        X = X[columns].to_numpy()
    X = np.asarray(X)
    X = np.ascontiguousarray(X.reshape(len(X), -1), dtype=dtype)
    if y is not None:
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    return X, y


def _shape(part: tuple[np.ndarray, np.ndarray | None]) -> tuple[int, int]:
    X, y = part
    return len(X), 0 if y is None else int(y.nbytes)


def _head(X: Any, y: Any, n: int) -> tuple[Any, Any]:
    if hasattr(X, "columns"):
        head = X.head(n, npartitions=-1)
        return head, (y.head(n, npartitions=-1) if y is not None else None)
    return X[:n].compute(), (y[:n].compute() if y is not None else None)
