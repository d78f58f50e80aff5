"""A fit's training data on the workers: sent once, sent again if every copy was lost,
released when the fit ends."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scalekit.training.worker_ops import bounded

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger(__name__)


class WorkerData:
    """``X`` and ``y`` as futures held on every worker.

    Arrays and tensors are scattered once to every worker. Dask collections are computed
    on the cluster (each partition where it already lives) into one array, then
    replicated to the workers; they never pass through the notebook.
    """

    def __init__(self, client: Client, X: Any, y: Any, *, timeout: float) -> None:
        self.client = client
        self.X = X
        self.y = y
        self.timeout = timeout  # bounds sending arrays: a stopped worker answers nothing
        self._futures: list[Future] = []

    def futures(self) -> list[Future]:
        """The data's futures, on every worker (sent now if no copy is left)."""
        if self._futures and all(f.status == "finished" for f in self._futures):
            return self._futures
        from dask import is_dask_collection

        if any(is_dask_collection(d) for d in (self.X, self.y)):
            parts = [self.client.compute(d) if is_dask_collection(d) else d
                     for d in (self.X, self.y)]
            local = [d for d in parts if not hasattr(d, "key")]
            scattered = iter(self.client.scatter(local, hash=False) if local else [])
            self._futures = [d if hasattr(d, "key") else next(scattered) for d in parts]
            self.client.replicate(self._futures)
        else:
            # bounded, like the round's own scatter: a stopped worker answers nothing
            self._futures = bounded(
                lambda: self.client.scatter([self.X, self.y], broadcast=True, hash=False),
                self.timeout, "sending the data")
        return self._futures

    def release(self) -> None:
        """Let the workers drop the data (the futures would otherwise keep it there as
        long as the controller lives)."""
        for future in self._futures:
            try:
                future.release()
            except Exception:
                logger.debug("could not release %s", future, exc_info=True)
        self._futures = []


class ShardedData:
    """A sharded source on the workers: described once to every worker (never the data),
    its Dask partitions computed where they land and released after the fit.

    Before anything is computed or sent (:meth:`prepare`): the validation shards are
    held out, each worker's share is checked against its memory limit, and each worker
    is asked to read the source (credentials must work there too); any of these fails
    with a :class:`~scalekit.data.DataError` and leaves the cluster as it was.
    """

    def __init__(self, client: Client, source: Any, *, timeout: float,
                 transformers: Any = None) -> None:
        self.client = client
        self.source = source
        self.timeout = timeout
        self.transformers = transformers  # a pipeline's steps before the net, unfitted
        self.transform: Any = None  # ... fitted on the cluster by prepare()
        self.input: Any = None  # the ShardedInput, once prepared
        self.notices: list[str] = []  # for the panel's status line
        self._partitions: list[Future] = []  # a Dask source's computed partitions
        self._futures: list[Future] = []

    def probe(self) -> tuple[Any, Any]:
        """Two rows for the notebook's dry run of the module (through the fitted
        transformers: call it after :meth:`prepare`)."""
        X, y = self.source.probe(2)
        if self.transform is not None:
            X = self.transform.transform(X).astype(self.source.dtype, copy=False)
        return X, y

    def prepare(self, workers: list[str], *, train_split: Any, seed: int,
                model_bytes: int, net: Any = None) -> None:
        """Check memory and access, compute partitions, fit a pipeline's transformers
        partition-wise, hold out validation shards."""
        from scalekit.data.inputs import ShardedInput, check_memory, infer_classes
        from scalekit.data.pipeline import fit_on_cluster
        from scalekit.data.split import split_shards, valid_fraction

        source = self.source
        fraction = valid_fraction(train_split)  # a split it cannot follow: before all else
        limits = self._memory_limits(workers)
        is_dask = source.kind == "dask"
        check_memory(source, limits, len(workers), holds_share=is_dask,
                     model_bytes=model_bytes)
        if is_dask:
            self._partitions = source.materialize(self.client)
        else:
            self._check_readable(workers)
        if net is not None and _needs_classes(net):  # scorers ask net.classes_
            net.classes_inferred_ = infer_classes(source, self.client)
        if self.transformers is not None:
            self.transform = fit_on_cluster(self.transformers, source, self.client)
        train, valid = (source, None) if fraction is None else split_shards(
            source, fraction, seed)
        if len(train.shards) < len(workers):  # the documented rule: ranks share shards
            self.notices.append(
                f"{len(train.shards)} training shard(s) for {len(workers)} ranks: ranks share "
                "shards (each reads a whole shard and trains on its part of it); write "
                "smaller row groups or more files to give each rank its own")
        self.input = ShardedInput(train=train, valid=valid, transform=self.transform)

    def futures(self) -> list[Future]:
        """The sharded input's future, on every worker (sent now if no copy is left)."""
        if self._futures and all(f.status == "finished" for f in self._futures):
            return self._futures
        self._futures = bounded(
            lambda: self.client.scatter([self.input], broadcast=True, hash=False),
            self.timeout, "sending the data's description")
        return self._futures

    def release(self) -> None:
        if self._partitions:
            self.source.release(self.client)
        for future in [*self._futures, *self._partitions]:
            try:
                future.release()
            except Exception:
                logger.debug("could not release %s", future, exc_info=True)
        self._futures, self._partitions = [], []

    def _memory_limits(self, workers: list[str]) -> dict[str, int]:
        info = self.client.scheduler_info(n_workers=-1).get("workers") or {}
        return {w: int((info.get(w) or {}).get("memory_limit") or 0) for w in workers}

    def _check_readable(self, workers: list[str]) -> None:
        from scalekit.data.sources import DataError

        source = self.source

        def check() -> str:
            try:
                source.check_readable()
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return ""

        found = bounded(lambda: self.client.run(check, workers=workers), self.timeout,
                        "asking the workers to read the data")
        failed = {w: why for w, why in found.items() if why}
        if failed:
            worker, why = next(iter(failed.items()))
            raise DataError(
                f"{len(failed)} of {len(workers)} worker(s) cannot read {source.describe()}; "
                f"{worker}: {why}. Credentials and filesystem packages must be there too "
                "(storage_options=..., or the environment the workers started with). "
                "Nothing was started.")


def model_bytes(net: Any) -> int:
    """What a rank's model state takes: parameters, gradients and up to two optimizer
    buffers each (Adam's moments)."""
    module = getattr(net, "module_", None)
    if module is None or not hasattr(module, "parameters"):
        return 0
    return 4 * sum(p.numel() * p.element_size() for p in module.parameters())


def _needs_classes(net: Any) -> bool:
    """A skorch classifier that was given no ``classes``: skorch would infer them from
    ``y``, which a sharded fit never holds whole."""
    return hasattr(type(net), "classes_") and getattr(net, "classes", None) is None
