"""The scaling half of the kubernetes backend: ``scale``, ``resize`` and adaptive scaling
of a ``DaskCluster``'s default worker group, with errors in scalekit's words.

Adaptive scaling is decided in the notebook's process, as on the local backend: the
pure :func:`~scalekit.backends.adaptive.adaptive_decision`, fed with the scheduler's
target and the running fits' demand (:class:`~scalekit.backends.base.TrainingHooks`),
sets the worker group's replicas (:class:`~scalekit.backends.adaptive.WorkerGroupAdaptive`).
The operator's own ``DaskAutoscaler`` asks only the scheduler, to which a fit is one
busy task per worker: it never grows the cluster for a fit and may retire a rank
mid-epoch. It is used only to keep a kept cluster adapting once the notebook is gone
(and with it every fit the notebook ran).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from scalekit.backends import kube_api
from scalekit.backends.base import DaskClusterBackend, TrainingHooks
from scalekit.backends.kube_cluster import IoLoop
from scalekit.backends.kube_errors import KubernetesError, mask, mask_error, translate
from scalekit.config import AdaptConfig, ClusterConfig

logger = logging.getLogger(__name__)

SETTLE_S = 5.0  # at most this long for an adaptive tick under way to finish


class KubeScaling(DaskClusterBackend):
    """Scaling for :class:`~scalekit.backends.kubernetes.KubernetesBackend`, which sets
    the attributes declared here as it starts.

    Parameters
    ----------
    config : ClusterConfig
        Worker count and bounds.
    hooks : TrainingHooks, optional
        The running fits, for training-aware adaptive scaling (default: none).
    """

    def __init__(self, config: ClusterConfig, *, hooks: TrainingHooks | None = None) -> None:
        super().__init__(config, hooks=hooks)
        self.cluster_name: str | None = None
        self.namespace: str | None = None
        self._io: IoLoop | None = None
        self._secrets: tuple[str, ...] = ()  # values masked in every error
        self._pods_read = 0.0  # when the cached pod list was read (0: read it anew)

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except KubernetesError as exc:
            mask_error(exc, self._secrets)
            raise
        except Exception as exc:
            mask_error(exc, self._secrets)
            error = translate(exc, namespace=self.namespace)
            if error is None:
                raise
            raise mask_error(error, self._secrets) from exc

    def _forget_pods(self) -> None:
        """The cached pod list predates a change we made: the next look reads it anew."""
        self._pods_read = 0.0

    def scale(self, n: int) -> None:
        with self._translating():
            super().scale(n)
        self._forget_pods()

    def adapt(self, bounds: AdaptConfig) -> None:
        """Training-aware adaptive scaling decided in this process, as locally
        (:class:`~scalekit.backends.adaptive.WorkerGroupAdaptive`): it sets the worker
        group's replicas, and a shrink during a fit waits for the fit's epoch boundary.
        A ``DaskAutoscaler`` (a kept cluster's, see :meth:`_hand_over_adaptive`) is
        deleted first: one party decides."""
        from scalekit.backends.adaptive import WorkerGroupAdaptive

        bounds.within(self.config.max_workers)
        cluster = self._running()
        assert self._io is not None
        with self._translating():
            self._io.run(kube_api.delete_autoscaler(self.cluster_name, self.namespace))
            self._start_adaptive(cluster, WorkerGroupAdaptive, bounds)
        self._adaptive = (bounds.minimum, bounds.maximum)
        self._requested = None

    def stop_adapt(self) -> None:
        cluster = self._running()
        assert self._io is not None
        self._stop_adaptive(cluster)
        with self._translating():  # and the operator's, on a kept cluster
            replicas = self._io.run(kube_api.delete_autoscaler(self.cluster_name,
                                                               self.namespace))
        self._adaptive = None
        self._requested = replicas if replicas is not None else len(self.client.nthreads())

    def _stop_adaptive(self, cluster: Any, settle: bool = True) -> None:
        """Stop the adaptive ticks; with ``settle``, let a tick that already decided
        land its patch first, so that a manual count that follows has the last word."""
        DaskClusterBackend._stop_adaptive(cluster)
        adaptive = getattr(cluster, "_adaptive", None)
        deadline = time.monotonic() + SETTLE_S
        while settle and getattr(adaptive, "_adapting", False) and (
                time.monotonic() < deadline):
            time.sleep(0.05)

    def _hand_over_adaptive(self, io: IoLoop, minimum: int, maximum: int) -> None:
        """Leaving a kept cluster that adapts: the operator's ``DaskAutoscaler`` takes
        over. Once the notebook is gone no fit of it runs, so the scheduler's target is
        the whole story; the next session's ``adapt`` or ``scale`` removes it."""
        try:
            io.run(kube_api.create_autoscaler(self.cluster_name, self.namespace,
                                              minimum, maximum), timeout=10)
        except Exception as exc:
            logger.warning("kept cluster %s/%s stops adapting: creating its DaskAutoscaler "
                           "failed: %s", self.namespace, self.cluster_name,
                           mask(str(translate(exc, namespace=self.namespace) or exc),
                                self._secrets))

