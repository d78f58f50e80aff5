"""The Kubernetes backend: a ``DaskCluster`` run by the Dask operator, through
``dask_kubernetes.operator.KubeCluster(custom_cluster_spec=...)``.

It keeps the local backend's protocol (start, scale, adapt, close, snapshot), so the
panel and the training runtime do not know where the workers run. On top of
``KubeCluster`` it adds what a notebook needs on a real cluster:

- a watch over the start: a crash-looping or image-less pod, an operator that does not
  act, or a timeout ends the start at once with the evidence (pod logs, events, the last
  phase), and nothing is left behind;
- the known upstream race dask/dask-kubernetes#968, which leaves a ready cluster in
  ``Pending``: the backend sets ``Running`` as the fixed operator would;
- scheduler access by port-forward outside the cluster (without the 10 s DNS probe
  upstream does first) and by cluster DNS inside it; the forward is stopped on close;
- mutual TLS with a CA made for the cluster (its certificates in a Secret) and a
  NetworkPolicy that admits only the cluster's pods, the notebook and the operator,
  both owned by the DaskCluster (``kube_security``);
- errors that never show the values of ``env`` (they reach panels and logs);
- training-aware adaptive scaling decided in the notebook, on the worker group
  (``kube_scaling``), handed to the operator's autoscaler when a kept cluster is left;
- closing deletes the ``DaskCluster`` first (so a kernel shutdown with little time still
  removes it), unless ``keep_on_shutdown``; :meth:`KubernetesBackend.delete` (what
  ``%scalekit down`` calls) deletes it in any case.

The rooms around it: ``kube_spec`` (config -> manifest), ``kube_security``
(certificates, Secret and NetworkPolicy manifests), ``kube_api`` (the backend's own API
requests), ``kube_cluster`` (the loop and forward threads, the ``KubeCluster`` subclass),
``kube_scaling`` (scale and adapt), ``kube_errors`` (errors with evidence, masking).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable

from scalekit.backends import kube_api
from scalekit.backends.base import TrainingHooks
from scalekit.backends.kube_cluster import IoLoop, WatchedKubeCluster
from scalekit.backends.kube_errors import (
    KubernetesError,
    OperatorMissingError,
    PodFailureError,
    PodState,
    StartTimeoutError,
    causes,
    collect_evidence,
    failure_message,
    mask,
    mask_error,
    pod_failure,
    pod_lines,
    pods_text,
    secret_values,
    translate,
    waiting_for,
)
from scalekit.backends.kube_scaling import KubeScaling
from scalekit.backends.kube_spec import build_cluster_spec, cluster_name, require_image
from scalekit.config import ClusterConfig, KubernetesConfig
from scalekit.errors import ClusterError, ConfigError

logger = logging.getLogger(__name__)

DETAILS_TTL = 2.0  # the panel samples twice a second; the pod list is read at most this often
PENDING_FIX_AFTER = 2.0  # seconds a ready cluster may sit in "Pending" before we fix it


class KubernetesBackend(KubeScaling):
    """Workers as pods of a ``DaskCluster``; the Dask operator runs them.

    Parameters
    ----------
    config : ClusterConfig
        Worker count, threads, memory, bounds (as for the local backend).
    kube : KubernetesConfig, optional
        Image, namespace, resources...; default: ``scalekit.kubernetes`` in dask.config.
    hooks : TrainingHooks, optional
        The running fits, for training-aware adaptive scaling (default: none).
    """

    name = "kubernetes"

    def __init__(self, config: ClusterConfig, kube: KubernetesConfig | None = None, *,
                 hooks: TrainingHooks | None = None) -> None:
        super().__init__(config, hooks=hooks)
        self.kube = kube or KubernetesConfig.from_config()
        require_image(self.kube)  # fail before anything starts
        self.namespace = self.kube.namespace
        self.last_phase: str | None = None  # of the DaskCluster, as last observed
        self.pending_fixed = False  # dask/dask-kubernetes#968 was worked around
        self.deleted = False  # the DaskCluster was deleted (by close or delete)
        self._deadline = 0.0
        self._started_at = 0.0
        self._pending_since: float | None = None
        self._pods: list[PodState] = []
        self._pods_lock = threading.Lock()  # see pods()
        self._created: bool | None = False  # we created the DaskCluster (None: unknown)
        self._secrets = secret_values(self.kube.env)  # masked in every error

    # -- where the notebook runs -----------------------------------------------------------
    @property
    def port_forward(self) -> bool:
        """Reach the scheduler by port-forward (outside the cluster) or by DNS (inside)."""
        if self.kube.port_forward == "auto":
            return "KUBERNETES_SERVICE_HOST" not in os.environ
        return bool(self.kube.port_forward)

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        from distributed import Client

        if self._cluster is not None or self._closed:
            raise ClusterError(f"this {self.name} backend is already started")
        self._io = IoLoop()
        self._started_at = time.monotonic()
        self._deadline = self._started_at + self.kube.start_timeout
        try:
            self.namespace = self._io.run(kube_api.preflight(self.kube.namespace), timeout=60)
            self.cluster_name = cluster_name(self.kube.name)
            spec = build_cluster_spec(self.kube, self.config, self.cluster_name,
                                      self.namespace)
            # created here, on our own loop, so that a refusal comes back as it is (kr8s
            # retries 403s with a re-login that races with KubeCluster's other requests);
            # KubeCluster then finds it and connects
            self._created = None  # unknown until the API answers
            created = self._io.run(kube_api.create_cluster(spec, self.namespace), timeout=60)
            self._created = created is not None
            forward = self.port_forward
            security = self._io.run(kube_api.secure(
                self.kube, self.cluster_name, self.namespace, created, forward=forward),
                timeout=60)
            self._cluster = WatchedKubeCluster(
                watch=self._watch_from_cluster_loop, forward=forward, security=security,
                custom_cluster_spec=spec, namespace=self.namespace,
                shutdown_on_close=not self.kube.keep_on_shutdown,
                port_forward_cluster_ip=True if forward else None,
                resource_timeout=int(self.kube.operator_timeout) + 30, quiet=True)
            self._client = Client(self._cluster, set_as_default=False)
            self._wait_for_workers()
        except BaseException as exc:
            error = mask_error(self._failed_start(exc), self._secrets)
            mask_error(exc, self._secrets)
            if error is exc or not isinstance(exc, Exception):
                raise
            if any(error is e for e in causes(exc)):  # raised inside, wrapped on the way
                raise error  # noqa: B904 - it keeps its own cause
            raise error from exc
        self._settle()
        self._requested = self.config.workers
        logger.info("kubernetes cluster %s/%s up with %d workers in %.1fs", self.namespace,
                    self.cluster_name, self.config.workers,
                    time.monotonic() - self._started_at)

    def _settle(self) -> None:
        """One more look once the cluster is up. The start watch's last look often
        predates the scheduler's readiness (its probe passes after workers connect), and
        a snapshot must not show that; a 'Pending' phase now is #968's: fixed at once."""
        assert self._io is not None
        try:
            self._io.run(self._observe(started=True), timeout=10)
        except Exception:  # the cluster is up: a missed look must not fail the start
            logger.debug("looking at the started cluster failed", exc_info=True)
            self._forget_pods()

    def _watch_from_cluster_loop(self) -> Awaitable[None]:
        """The start watch, run on our loop (our own kr8s client) for KubeCluster's loop."""
        assert self._io is not None
        return asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._watch_start(), self._io.loop))

    async def _observe(self, started: bool = False) -> list[PodState]:
        """Read the DaskCluster phase and the pods; fix #968's stuck 'Pending' (at once
        when the cluster has ``started``: scheduler ready and workers connected)."""
        found, phase, pods = await kube_api.read_cluster(self.cluster_name, self.namespace)
        self.last_phase = phase
        self._pods, self._pods_read = pods, time.monotonic()
        if phase == "Pending" and found is not None:
            now = time.monotonic()
            self._pending_since = self._pending_since or now
            scheduler_ready = any(p.component == "scheduler" and p.ready for p in pods)
            waited = started or now - self._pending_since > PENDING_FIX_AFTER
            if scheduler_ready and waited and (
                    await kube_api.fix_pending(found, self.cluster_name, self.namespace)):
                self.pending_fixed, self.last_phase = True, "Running"
        else:
            self._pending_since = None
        return pods

    async def _watch_start(self) -> None:
        """One look at a starting cluster: raise on failure or timeout."""
        try:
            pods = await self._observe()
        except Exception as exc:
            error = translate(exc, namespace=self.namespace)
            if error is not None:
                raise error from exc
            logger.debug("observing the starting cluster failed", exc_info=True)
            pods = self._pods
        failed = pod_failure(pods)
        if failed is not None:
            evidence = await collect_evidence(self.namespace or "default", failed)
            raise PodFailureError(failure_message(failed, self.cluster_name or "?"), evidence,
                                  failed)
        now = time.monotonic()
        if self.last_phase is None and now - self._started_at > self.kube.operator_timeout:
            raise OperatorMissingError(
                f"the Dask operator did not act on DaskCluster {self.cluster_name!r} within "
                f"{self.kube.operator_timeout:g}s (it has no status.phase): the operator is "
                f"not running or does not watch namespace {self.namespace!r}. Check "
                "`kubectl get pods -A -l app.kubernetes.io/name=dask-kubernetes-operator` "
                "and its logs (see docs/kubernetes.md, section 'Install the Dask operator').")
        if now > self._deadline:
            scheduler_ready = any(p.component == "scheduler" and p.ready for p in pods)
            stuck = sorted((p for p in pods if not p.ready),
                           key=lambda p: p.component != "scheduler")
            evidence = pods_text(pods)
            if stuck:
                evidence += "\n\n" + await collect_evidence(self.namespace or "default",
                                                            stuck[0])
            raise StartTimeoutError(
                f"the kubernetes cluster {self.cluster_name!r} did not start within "
                f"{self.kube.start_timeout:g}s (scalekit.kubernetes.start-timeout); last "
                f"observed DaskCluster phase: {self.last_phase or 'none'}"
                + (" (dask/dask-kubernetes#968: patching it to Running failed)"
                   if self.last_phase == "Pending" and scheduler_ready else "")
                + "; still waiting for "
                + waiting_for(pods, self._workers_now(), self.config.workers),
                evidence, self.last_phase)

    def _workers_now(self) -> int:
        return len(self._client.nthreads()) if self._client is not None else 0

    def _wait_for_workers(self) -> None:
        assert self._io is not None and self._client is not None
        next_look = 0.0
        while len(self._client.nthreads()) < self.config.workers:
            if time.monotonic() >= next_look:
                self._io.run(self._watch_start(), timeout=60)
                next_look = time.monotonic() + 1.0
            time.sleep(0.2)

    def _failed_start(self, exc: BaseException) -> BaseException:
        """Remove everything the start made; return the error to raise."""
        error: BaseException = exc
        if isinstance(exc, Exception) and not isinstance(exc, (KubernetesError, ConfigError)):
            translated = translate(exc, namespace=self.namespace)
            if translated is not None:
                error = translated
            elif isinstance(exc, ClusterError):
                error = exc
            else:
                error = ClusterError(
                    f"the kubernetes cluster {self.cluster_name!r} failed to start: "
                    f"{type(exc).__name__}: {exc} (last DaskCluster phase: "
                    f"{self.last_phase or 'none'})\n\n{pods_text(self._pods)}")
        self._cleanup(delete=self._created is not False)  # a kept one we joined stays
        return error

    # -- close and delete --------------------------------------------------------------------
    def close(self) -> None:
        """Delete the cluster (unless ``keep_on_shutdown``) and disconnect."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cleanup(delete=not self.kube.keep_on_shutdown)

    def delete(self) -> None:
        """Delete the ``DaskCluster`` and disconnect, whatever ``keep_on_shutdown`` says.

        ``%scalekit down`` calls this: ``keep_on_shutdown`` only spares the cluster when
        the kernel shuts down or the session closes. On a backend already closed with
        its cluster kept, this deletes the kept cluster.
        """
        with self._lock:
            was_closed, self._closed = self._closed, True
        if not was_closed:
            self._cleanup(delete=True)
        elif self.cluster_name and not self.deleted:
            io = IoLoop()
            try:
                self._delete_and_wait(io)
            finally:
                io.stop()

    def _cleanup(self, delete: bool) -> None:
        self._closed = True
        io, client, cluster = self._io, self._client, self._cluster
        if self._adaptive is not None and cluster is not None:
            # no tick may scale a group being deleted; no wait: a kernel shutdown leaves
            # little time, and the deletion makes a patch under way moot
            self._stop_adaptive(cluster, settle=False)
            if not delete and io is not None:
                self._hand_over_adaptive(io, *self._adaptive)
        if delete and io is not None and self.cluster_name:
            try:  # first: a kernel shutdown may cut the rest short
                io.run(kube_api.delete_cluster(self.cluster_name, self.namespace), timeout=10)
            except Exception as exc:
                self._delete_failed(exc)
            else:
                self.deleted = True
        for thing in (client, cluster):
            if thing is None:
                continue
            try:
                if isinstance(thing, WatchedKubeCluster):
                    thing.shutdown_on_close = False  # deleted above, or kept
                    thing.close(timeout=max(self.kube.close_timeout, 1))
                else:
                    thing.close()
            except Exception:  # closing must always finish; log what went wrong
                logger.warning("closing %r failed", thing, exc_info=True)
        if self.deleted and io is not None:
            self._wait_gone(io)
        elif not delete and self.cluster_name and self.kube.keep_on_shutdown:
            logger.info("keeping kubernetes cluster %s/%s (keep-on-shutdown); delete it with "
                        "`kubectl delete daskcluster -n %s %s`",
                        self.namespace, self.cluster_name, self.namespace, self.cluster_name)
        if io is not None:
            io.stop()

    def _delete_and_wait(self, io: IoLoop) -> None:
        try:
            io.run(kube_api.delete_cluster(self.cluster_name, self.namespace), timeout=10)
        except Exception as exc:
            self._delete_failed(exc)
            return
        self.deleted = True
        self._wait_gone(io)
        logger.info("deleted kubernetes cluster %s/%s", self.namespace, self.cluster_name)

    def _delete_failed(self, exc: Exception) -> None:
        logger.warning(
            "could not delete DaskCluster %s/%s: %s; delete it with `kubectl delete "
            "daskcluster -n %s %s`", self.namespace, self.cluster_name,
            mask(str(translate(exc, namespace=self.namespace) or exc), self._secrets),
            self.namespace, self.cluster_name)

    def _wait_gone(self, io: IoLoop) -> None:
        if not self.kube.close_timeout:
            return
        try:
            io.run(kube_api.wait_pods_gone(self.cluster_name, self.namespace),
                   timeout=self.kube.close_timeout)
        except Exception:
            logger.warning("pods of %s/%s were still terminating after %gs",
                           self.namespace, self.cluster_name, self.kube.close_timeout)

    # -- state -----------------------------------------------------------------------------
    def pods(self, fresh: bool = True) -> list[PodState]:
        """The cluster's pods (scheduler and workers) as the API server has them.

        One read at a time: a caller that comes while another thread reads (the panel's
        sampler and a cell, just after a start) waits for that read's result instead of
        taking the list it is replacing.
        """
        with self._pods_lock:
            if (fresh or time.monotonic() - self._pods_read > DETAILS_TTL) and (
                    self._io is not None and not self._closed and self.cluster_name):
                self._pods_read = time.monotonic()  # an unreachable API: not asked at 2 Hz
                with self._translating():
                    self._io.run(self._observe(), timeout=10)
            return list(self._pods)

    def _details(self) -> tuple[tuple[str, str], ...]:
        try:
            pods = self.pods(fresh=False)
        except Exception as exc:  # the panel must keep working if the API hiccups
            return (("pods", f"unavailable ({type(exc).__name__})"),)
        return pod_lines(pods, f"{self.namespace}/{self.cluster_name} "
                               f"({self.last_phase or 'unknown'})")
