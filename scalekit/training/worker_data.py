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
