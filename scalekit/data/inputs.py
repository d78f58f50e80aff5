"""What ``sk.fit`` was given, as the runtime sees it: the sampling mode and, for the
sharded mode, one picklable description of the training (and validation) shards that
is sent to every worker once.

============  ===================================  ==========================================
sampling      inputs                               what a rank reads
============  ===================================  ==========================================
``exact``     numpy arrays, tensors, a Dataset     every sample: the whole set on every worker
              (a Dask collection, if asked)        (computed on the cluster, replicated)
``sharded``   ``sk.data.parquet``/``npy``,         its part of each epoch's deal of shards,
              Dask collections (the default)       streamed with read-ahead
============  ===================================  ==========================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scalekit.data.sources import DataError, ShardedSource

SAMPLINGS = ("exact", "sharded")
RUNTIME_BYTES = 400 * 2**20  # a rank's process with torch, skorch and Dask loaded


@dataclasses.dataclass
class ShardedInput:
    """The sharded data of one fit (shipped to every worker once).

    Attributes
    ----------
    train : ShardedSource
    valid : ShardedSource or None
        Held-out shards for validation (``None``: no validation).
    transform : object, optional
        Fitted scikit-learn transformers applied to each window a rank reads (the
        pipeline's steps before the net).
    """

    train: ShardedSource
    valid: ShardedSource | None = None
    transform: Any = None

    def __len__(self) -> int:
        return self.train.n_rows

    def apply(self, X: Any) -> Any:
        return X if self.transform is None else self.transform.transform(X)


def resolve_sampling(X: Any, y: Any, sampling: str | None) -> tuple[str, Any]:
    """``(sampling, X)``: the mode for these inputs, and ``X`` as a sharded source when
    the mode is sharded. A Dask collection is sharded unless ``exact`` is asked for."""
    from scalekit.data.dask_source import DaskSource, is_dask

    if sampling is not None and sampling not in SAMPLINGS:
        raise DataError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if isinstance(X, ShardedSource):
        if sampling == "exact":
            raise DataError(
                f"sampling='exact' reads every sample on every rank, which a {X.kind} source "
                "does not allow (that is what it avoids); load it into memory for the exact "
                "path, or leave sampling='sharded'")
        if y is not None:
            raise DataError(f"the {X.kind} source carries its labels (target=...): pass y=None")
        return "sharded", X
    if is_dask(X) or is_dask(y):
        if sampling == "exact":
            return "exact", X
        if not is_dask(X) or (y is not None and not is_dask(y)):
            raise DataError("X and y must both be Dask collections (or both in memory)")
        return "sharded", DaskSource(X, y)
    if sampling == "sharded":
        raise DataError(
            "sampling='sharded' needs a sharded source: sk.data.parquet(...), "
            "sk.data.npy(...) or a Dask collection; in-memory arrays train exact (every "
            "worker holds them whole: see docs/data.md)")
    return "exact", X


def window_bytes(source: ShardedSource) -> int:
    """Bytes of the largest shuffle window: ``window`` of the largest shards."""
    sizes = sorted((s.nbytes for s in source.shards), reverse=True)
    return sum(sizes[: source.window]) if sizes else 0


def check_memory(source: ShardedSource, limits: dict[str, int], world_size: int, *,
                 holds_share: bool, model_bytes: int, runtime_bytes: int = RUNTIME_BYTES
                 ) -> None:
    """Refuse, with the numbers, a fit whose ranks would not fit their workers' memory.

    A rank holds its read buffer (``1 + prefetch`` windows), the model's state and the
    runtime; where the data lives in the workers' memory (Dask partitions,
    ``holds_share``) its share of the data too. Workers without a limit (0) pass.
    """
    buffer = window_bytes(source) * (1 + source.prefetch)
    share = -(-source.nbytes // world_size) if holds_share else 0
    need = share + buffer + model_bytes + runtime_bytes
    short = {w: limit for w, limit in limits.items() if limit and limit < need}
    if not short:
        return
    worker, limit = min(short.items(), key=lambda kv: kv[1])
    parts = [f"its share of the data {_mib(share)} ({_mib(source.nbytes)} over "
             f"{world_size} worker(s))"] if holds_share else []
    parts += [f"a read buffer of {1 + source.prefetch} window(s) of up to {source.window} "
              f"shard(s), {_mib(buffer)}", f"the model's state {_mib(model_bytes)}",
              f"the runtime (torch, Dask) ~{_mib(runtime_bytes)}"]
    advice = ("add workers or raise memory_limit" if holds_share
              else "write smaller shards (row groups / files), lower window or prefetch, or "
                   "raise memory_limit")
    raise DataError(
        f"worker {worker} has a memory limit of {_mib(limit)}, but a rank there would hold "
        f"{_mib(need)}: " + " + ".join(parts) + f". {len(short)} of {len(limits)} worker(s) "
        f"are too small; {advice}. Nothing was started.")


def infer_classes(source: ShardedSource, client: Any) -> np.ndarray | None:
    """A classifier's classes: the labels found in every shard, read on the workers (one
    small task per shard; only the target column of a parquet file)."""
    tasks = [client.submit(_unique_labels, source, i, pure=False)
             for i in range(len(source.shards))]
    found = [u for u in client.gather(tasks) if u is not None]
    if not found:
        return None
    return np.unique(np.concatenate(found))


def _unique_labels(source: ShardedSource, index: int) -> np.ndarray | None:
    try:
        labels = source.labels(index)
    finally:
        source.forget()
    return None if labels is None else np.unique(labels)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
