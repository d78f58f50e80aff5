"""Validation data from a sharded source: whole shards held out, chosen by a seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scalekit.data.sources import DataError, ShardedSource


class SubsetSource(ShardedSource):
    """Some shards of a source (by index), read through it."""

    def __init__(self, source: ShardedSource, indices: Sequence[int]) -> None:
        self.base = source
        self.indices = tuple(int(i) for i in indices)
        self.shards = tuple(source.shards[i] for i in self.indices)
        self.kind = source.kind
        self.n_features = source.n_features
        self.window, self.prefetch, self.dtype = source.window, source.prefetch, source.dtype

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.base.read(self.indices[index])

    def labels(self, index: int) -> np.ndarray | None:
        return self.base.labels(self.indices[index])

    def probe(self, n: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
        return self.base.probe(n)

    def check_readable(self) -> None:
        self.base.check_readable()

    def forget(self) -> None:
        self.base.forget()

    def locality(self, workers: Sequence[str]) -> list[int]:
        found = self.base.locality(workers)  # type: ignore[attr-defined]
        return [found[i] for i in self.indices]


def valid_fraction(train_split: Any) -> float | None:
    """The share of the data a skorch ``train_split`` holds out (``None``: no
    validation); :class:`DataError` for a split a sharded source cannot follow."""
    if train_split is None or train_split is False:
        return None
    cv = getattr(train_split, "cv", None)
    if cv is None or isinstance(cv, bool):
        raise DataError(
            f"a sharded source cannot be split by {train_split!r}: use skorch's ValidSplit "
            "(a share of whole shards is held out for validation) or train_split=None")
    fraction = 1.0 / cv if isinstance(cv, int) else float(cv)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"train_split holds out {fraction:g} of the data; expected a share "
                        "between 0 and 1")
    return fraction


def split_shards(source: ShardedSource, fraction: float, seed: int
                 ) -> tuple[ShardedSource, ShardedSource]:
    """``(train, valid)``: ``round(fraction * shards)`` whole shards (at least one) for
    validation, picked by ``seed``; the rest for training."""
    n = len(source.shards)
    if n < 2:
        raise DataError(
            f"the source has {n} shard: validation holds out whole shards, so it needs at "
            "least 2 (write more files or smaller row groups), or set train_split=None")
    k = min(n - 1, max(1, round(fraction * n)))
    chosen = set(np.random.default_rng([seed, 11]).choice(n, size=k, replace=False).tolist())
    train = [i for i in range(n) if i not in chosen]
    return SubsetSource(source, train), SubsetSource(source, sorted(chosen))
