"""Data sources that are dealt to the ranks as shards (``sk.data``).

In-memory arrays train on the *exact* path: every worker holds the whole set. The
sources here are *sharded*: each rank reads its part of each epoch's deal straight from
where the data is (files on any fsspec URL, or the workers' own memory for Dask
collections), streamed with read-ahead, so a worker holds its share, not the whole set.
See docs/data.md.

>>> train = sk.data.parquet("s3://bucket/train/", features=["f0", "f1"], target="label")
>>> sk.fit(net, train)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scalekit.data.dask_source import DaskSource
from scalekit.data.inputs import SAMPLINGS, ShardedInput
from scalekit.data.sources import DataError, NpySource, ParquetSource, Shard, ShardedSource


def parquet(url: str, *, features: Sequence[str], target: str | None = None,
            storage_options: dict[str, Any] | None = None, window: int = 1,
            prefetch: int = 1) -> ParquetSource:
    """Parquet files at ``url`` (a file or a folder), one shard per row group.

    Only footers are read here; each rank reads its own row groups on its worker.
    See :class:`~scalekit.data.sources.ParquetSource` for the parameters.
    """
    return ParquetSource(url, features=features, target=target,
                         storage_options=storage_options, window=window, prefetch=prefetch)


def npy(url: str, *, x: str = "X", y: str | None = "y",
        storage_options: dict[str, Any] | None = None, window: int = 1,
        prefetch: int = 1) -> NpySource:
    """A folder of ``.npz`` files (arrays ``x`` and ``y`` in each) or of ``.npy`` pairs
    (``<url>/X/*.npy`` and ``<url>/y/*.npy``), one shard per file.

    See :class:`~scalekit.data.sources.NpySource` for the parameters.
    """
    return NpySource(url, x=x, y=y, storage_options=storage_options, window=window,
                     prefetch=prefetch)


def from_dask(X: Any, y: Any = None, *, features: Sequence[str] | None = None,
              target: str | None = None, window: int = 1, prefetch: int = 1) -> DaskSource:
    """A Dask array or dataframe (with ``y``, or a frame with ``target``), one shard per
    partition; ``sk.fit(net, X, y)`` with Dask collections does this for you."""
    return DaskSource(X, y, features=features, target=target, window=window,
                      prefetch=prefetch)


__all__ = ["SAMPLINGS", "DaskSource", "DataError", "NpySource", "ParquetSource", "Shard",
           "ShardedInput", "ShardedSource", "from_dask", "npy", "parquet"]
