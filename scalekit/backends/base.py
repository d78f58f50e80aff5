"""The backend protocol, and the shared part for any ``distributed.deploy.Cluster``.

A backend owns one Dask cluster and one ``distributed.Client`` on it. Both the local
backend (``LocalCluster``) and the Kubernetes backend (the dask-kubernetes operator's
``KubeCluster``) are ``distributed.deploy.Cluster`` objects, so scaling, adaptivity,
closing and the scheduler snapshot are written once here; a backend only says how its
cluster is made and what extra details (e.g. pod phases) its snapshot carries.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from scalekit.backends.metrics import snapshot_from_info
from scalekit.config import AdaptConfig, ClusterConfig
from scalekit.errors import ClusterError
from scalekit.events import ClusterSnapshot

if TYPE_CHECKING:
    from distributed import Client
    from distributed.deploy import Cluster

logger = logging.getLogger(__name__)


def _no_fit() -> int | None:
    return None


def _no_shrink(n: int) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class TrainingHooks:
    """What a backend may ask of the fits running on its cluster; given at construction
    (the session passes its own, a backend on its own gets these defaults: no fit).

    Attributes
    ----------
    demand : callable() -> int or None
        Workers the running fits can use (``None``: no fit runs). Training-aware
        adaptive scaling grows the cluster to it.
    request_shrink : callable(int)
        Hands a wanted shrink to the running fits; they apply it at their next safe
        point (an epoch boundary) through the backend's ``resize``.
    """

    demand: Callable[[], int | None] = _no_fit
    request_shrink: Callable[[int], None] = _no_shrink


@runtime_checkable
class ClusterBackend(Protocol):
    """What the session, the panels and the training runtime need from a cluster.

    A backend is built as ``Backend(config, ..., hooks=TrainingHooks(...))``: ``hooks``
    is how its adaptive scaling learns about running fits, and nothing is attached to
    it after construction.
    """

    name: str
    config: ClusterConfig
    hooks: TrainingHooks

    def start(self) -> None:
        """Start the cluster and connect a client; on failure nothing is left running."""

    def scale(self, n: int) -> None:
        """Set the worker count; a manual count switches adaptive scaling off."""

    def adapt(self, bounds: AdaptConfig) -> None:
        """Training-aware adaptive scaling within ``bounds`` (see ``backends/adaptive``)."""

    def resize(self, n: int) -> None:
        """Set the worker count without switching adaptive scaling off (used when a fit
        applies a shrink at its safe point)."""

    def stop_adapt(self) -> None:
        """Switch adaptive scaling off, keeping the current workers."""

    def close(self) -> None:
        """Close the client and the cluster (idempotent)."""

    def snapshot(self) -> ClusterSnapshot:
        """The cluster's state now, for panels and events."""

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` on this cluster."""

    @property
    def adaptive(self) -> tuple[int, int] | None:
        """Adaptive bounds when adaptive scaling is on, else ``None``."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""


class DaskClusterBackend:
    """Backend over a ``distributed.deploy.Cluster``; subclasses implement ``_make_cluster``.

    Parameters
    ----------
    config : ClusterConfig
        How many workers, threads, memory; the bounds for scaling.
    hooks : TrainingHooks, optional
        The running fits, for training-aware adaptive scaling (default: none).
    """

    name = "dask"

    def __init__(self, config: ClusterConfig, *, hooks: TrainingHooks | None = None) -> None:
        self.config = config
        self.hooks = hooks or TrainingHooks()
        self._cluster: Cluster | None = None
        self._client: Client | None = None
        self._requested: int | None = None
        self._adaptive: tuple[int, int] | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def _make_cluster(self) -> Cluster:  # pragma: no cover - abstract
        raise NotImplementedError

    def _details(self) -> tuple[tuple[str, str], ...]:
        """Backend-specific lines for the snapshot (e.g. pod phases)."""
        return ()

    def start(self) -> None:
        from distributed import Client

        if self._cluster is not None:
            raise ClusterError(f"this {self.name} backend is already started")
        try:
            self._cluster = self._make_cluster()
            self._client = Client(self._cluster, set_as_default=False)
            self._client.wait_for_workers(
                self.config.workers, timeout=self.config.start_timeout
            )
        except BaseException as exc:  # an interrupted start must not leave a half cluster
            self.close()
            if isinstance(exc, ClusterError) or not isinstance(exc, Exception):
                raise
            raise ClusterError(
                f"the {self.name} cluster failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        self._requested = self.config.workers

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        client, cluster = self._client, self._cluster
        if self._adaptive is not None and cluster is not None:
            self._stop_adaptive(cluster)
        for thing in (client, cluster):
            if thing is None:
                continue
            try:
                thing.close()
            except Exception:  # closing must always finish; log what went wrong
                logger.warning("closing %r failed", thing, exc_info=True)

    # -- scaling ---------------------------------------------------------------------
    def scale(self, n: int) -> None:
        n = self.config.check_workers(n)
        cluster = self._running()
        if self._adaptive is not None:  # a manual count means "stop deciding for me"
            self.stop_adapt()
        cluster.scale(n)
        self._requested = n

    def adapt(self, bounds: AdaptConfig) -> None:
        from scalekit.backends.adaptive import TrainingAwareAdaptive

        bounds.within(self.config.max_workers)
        self._start_adaptive(self._running(), TrainingAwareAdaptive, bounds)
        self._adaptive = (bounds.minimum, bounds.maximum)
        self._requested = None

    def _start_adaptive(self, cluster: Cluster, adaptive: type, bounds: AdaptConfig) -> None:
        """Run ``adaptive`` (a training-aware ``distributed.Adaptive``) on ``cluster``."""
        cluster.adapt(
            Adaptive=adaptive,
            hooks=self.hooks,
            minimum=bounds.minimum,
            maximum=bounds.maximum,
            interval=f"{bounds.interval}s",
            wait_count=bounds.wait_count,
        )

    def resize(self, n: int) -> None:
        """Set the worker count without switching adaptive scaling off (used when a fit
        applies a shrink at its safe point)."""
        self._running().scale(n)
        if self._adaptive is None:
            self._requested = n

    def stop_adapt(self) -> None:
        cluster = self._running()
        self._stop_adaptive(cluster)
        self._adaptive = None
        self._requested = len(self.client.nthreads())

    @staticmethod
    def _stop_adaptive(cluster: Cluster) -> None:
        adaptive = getattr(cluster, "_adaptive", None)
        if adaptive is not None:
            adaptive.stop()

    # -- state -----------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None or self._closed:
            raise ClusterError(f"the {self.name} cluster is not running; start one first")
        return self._client

    @property
    def cluster(self) -> Cluster:
        return self._running()

    @property
    def adaptive(self) -> tuple[int, int] | None:
        return self._adaptive

    @property
    def requested(self) -> int | None:
        return self._requested

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dashboard_link(self) -> str | None:
        if self._cluster is None or not self.config.dashboard:
            return None
        try:
            return self._cluster.dashboard_link or None
        except Exception:  # no dashboard server (bokeh missing)
            return None

    @property
    def scheduler_address(self) -> str | None:
        return None if self._cluster is None else self._cluster.scheduler_address

    def snapshot(self) -> ClusterSnapshot:
        if self._closed or self._client is None:
            return ClusterSnapshot(backend=self.name, status="closed")
        info: dict[str, Any] = self._client.scheduler_info(n_workers=-1)
        if not info.get("workers"):
            # scheduler_info's worker list is occasionally empty during a refresh;
            # nthreads() is the reliable membership source.
            nthreads = self._client.nthreads()
            info = {**info, "workers": {a: {"nthreads": t} for a, t in nthreads.items()}}
        return snapshot_from_info(
            info,
            backend=self.name,
            requested=self._requested,
            adaptive=self._adaptive,
            dashboard_link=self.dashboard_link,
            details=self._details(),
        )

    def _running(self) -> Cluster:
        if self._cluster is None or self._closed:
            raise ClusterError(f"the {self.name} cluster is not running; start one first")
        return self._cluster
