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
- closing deletes the ``DaskCluster`` first (so a kernel shutdown with little time still
  removes it), unless ``keep_on_shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from dask_kubernetes.operator import KubeCluster
from distributed.core import Status

from scalekit.backends.base import DaskClusterBackend
from scalekit.backends.kube_errors import (
    KubernetesError,
    OperatorMissingError,
    PodFailureError,
    PodState,
    StartTimeoutError,
    collect_evidence,
    failure_message,
    pod_failure,
    translate,
)
from scalekit.backends.kube_spec import (
    SCHEDULER_PORT,
    build_cluster_spec,
    cluster_name,
    require_image,
)
from scalekit.config import AdaptConfig, ClusterConfig, KubernetesConfig
from scalekit.errors import ClusterError, ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")
DETAILS_TTL = 2.0  # the panel samples twice a second; the pod list is read at most this often
MAX_POD_LINES = 8  # the snapshot lists every pod up to this many, else the troubled ones
PENDING_FIX_AFTER = 2.0  # seconds a ready cluster may sit in "Pending" before we fix it


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class _Loop:
    """A private event loop thread for the backend's own Kubernetes API calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="scalekit-kube",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class _PortForward:
    """A kr8s port-forward to the scheduler service on its own thread, stoppable."""

    def __init__(self, service: str, namespace: str, port: int) -> None:
        self.service, self.namespace, self.port = service, namespace, port
        self.local_port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"scalekit-forward {namespace}/{service}")

    def start(self, timeout: float = 60.0) -> int:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"port-forward to {self.service} did not start in {timeout}s")
        if self._error is not None:
            raise self._error
        return self.local_port

    def _main(self) -> None:
        async def serve() -> None:
            from kr8s.asyncio.objects import Service

            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                service = await Service.get(self.service, namespace=self.namespace)
                async with service.portforward(self.port, local_port="auto") as port:
                    self.local_port = port
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()

        with contextlib.suppress(BaseException):
            asyncio.run(serve())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(5)


class _KubeCluster(KubeCluster):
    """``KubeCluster`` whose start is watched, whose forward we own, and whose failed
    construction stops its loop thread."""

    def __init__(self, *, watch: Callable[[], Awaitable[None]], forward: bool,
                 **kwargs: Any) -> None:
        self._scalekit_watch = watch
        self._scalekit_forward_wanted = forward
        self.scalekit_forward: _PortForward | None = None
        try:
            super().__init__(**kwargs)
        except BaseException:
            self.abandon()
            raise

    async def _start(self) -> None:
        start = asyncio.ensure_future(super()._start())
        try:
            while True:
                done, _ = await asyncio.wait({start}, timeout=1.0)
                if done:
                    return start.result()
                await self._scalekit_watch()
        except BaseException:
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
            raise

    async def _get_scheduler_address(self) -> str:
        if not self._scalekit_forward_wanted:
            return await super()._get_scheduler_address()
        forward = _PortForward(f"{self.name}-scheduler", self.namespace, SCHEDULER_PORT)
        self.scalekit_forward = forward
        port = await asyncio.get_running_loop().run_in_executor(None, forward.start)
        return f"tcp://127.0.0.1:{port}"

    def abandon(self) -> None:
        """Forget this object without deleting the cluster (the backend does that)."""
        self.shutdown_on_close = False
        if self.scalekit_forward is not None:
            self.scalekit_forward.stop()
        with contextlib.suppress(Exception):
            self.status = Status.closed
        runner = getattr(self, "_loop_runner", None)
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.stop()

    def close(self, timeout: float = 3600) -> None:  # type: ignore[override]
        try:
            super().close(timeout=timeout)
        finally:
            self.abandon()


class KubernetesBackend(DaskClusterBackend):
    """Workers as pods of a ``DaskCluster``; the Dask operator runs them.

    Parameters
    ----------
    config : ClusterConfig
        Worker count, threads, memory, bounds (as for the local backend).
    kube : KubernetesConfig, optional
        Image, namespace, resources...; default: ``scalekit.kubernetes`` in dask.config.
    """

    name = "kubernetes"

    def __init__(self, config: ClusterConfig, kube: KubernetesConfig | None = None) -> None:
        super().__init__(config)
        self.kube = kube or KubernetesConfig.from_config()
        require_image(self.kube)  # fail before anything starts
        self.cluster_name: str | None = None
        self.namespace: str | None = self.kube.namespace
        self.last_phase: str | None = None  # of the DaskCluster, as last observed
        self.pending_fixed = False  # dask/dask-kubernetes#968 was worked around
        self._io: _Loop | None = None
        self._deadline = 0.0
        self._started_at = 0.0
        self._pending_since: float | None = None
        self._pods: list[PodState] = []
        self._pods_read = 0.0
        self._created: bool | None = False  # we created the DaskCluster (None: unknown)

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
        self._io = _Loop()
        self._started_at = time.monotonic()
        self._deadline = self._started_at + self.kube.start_timeout
        try:
            self.namespace = self._io.run(self._preflight(), timeout=60)
            self.cluster_name = cluster_name(self.kube.name)
            spec = build_cluster_spec(self.kube, self.config, self.cluster_name)
            # created here, on our own loop, so that a refusal comes back as it is (kr8s
            # retries 403s with a re-login that races with KubeCluster's other requests);
            # KubeCluster then finds it and connects
            self._created = None  # unknown until the API answers
            self._created = self._io.run(self._create(spec), timeout=60)
            forward = self.port_forward
            self._cluster = _KubeCluster(
                watch=self._watch_from_cluster_loop, forward=forward, custom_cluster_spec=spec,
                namespace=self.namespace, shutdown_on_close=not self.kube.keep_on_shutdown,
                port_forward_cluster_ip=True if forward else None,
                resource_timeout=int(self.kube.operator_timeout) + 30, quiet=True)
            self._client = Client(self._cluster, set_as_default=False)
            self._wait_for_workers()
        except BaseException as exc:
            error = self._failed_start(exc)
            if error is exc or not isinstance(exc, Exception):
                raise
            if any(error is e for e in _causes(exc)):  # raised inside, wrapped on the way
                raise error  # noqa: B904 - it keeps its own cause
            raise error from exc
        self._requested = self.config.workers
        logger.info("kubernetes cluster %s/%s up with %d workers in %.1fs", self.namespace,
                    self.cluster_name, self.config.workers,
                    time.monotonic() - self._started_at)

    async def _preflight(self) -> str:
        """Credentials, API server, the operator's CRDs; returns the namespace to use."""
        import kr8s

        try:
            api = await kr8s.asyncio.api()
            namespace = self.kube.namespace or api.namespace
            async with api.call_api("GET", version="", base="/apis",
                                    url="kubernetes.dask.org/v1") as response:
                resources = {r["name"] for r in response.json().get("resources", [])}
        except Exception as exc:
            error = translate(exc, namespace=self.kube.namespace)
            if isinstance(error, OperatorMissingError) or getattr(
                    getattr(exc, "response", None), "status_code", None) == 404:
                raise OperatorMissingError(
                    "the Dask operator's custom resources (kubernetes.dask.org/v1) are not "
                    "installed in this cluster. Install the operator with Helm (see "
                    "docs/kubernetes.md, section 'Install the Dask operator').",
                    "GET /apis/kubernetes.dask.org/v1 answered 404 Not Found") from exc
            if error is not None:
                raise error from exc
            raise
        missing = {"daskclusters", "daskworkergroups", "daskautoscalers"} - resources
        if missing:
            raise OperatorMissingError(
                f"the Dask operator's CRDs are incomplete (missing {sorted(missing)}); "
                "reinstall the operator (see docs/kubernetes.md, section 'Install the Dask "
                "operator').")
        return namespace

    async def _create(self, spec: dict[str, Any]) -> bool:
        """Create the DaskCluster; False if one of that name exists (a kept cluster)."""
        import kr8s
        from dask_kubernetes.operator._objects import DaskCluster

        cluster = await DaskCluster(spec, namespace=self.namespace)
        try:
            await cluster.create()
        except kr8s.ServerError as exc:
            if getattr(exc.response, "status_code", None) == 409:
                logger.info("DaskCluster %s/%s exists: connecting to it", self.namespace,
                            self.cluster_name)
                return False
            raise translate(exc, namespace=self.namespace) or exc from exc
        return True

    def _watch_from_cluster_loop(self) -> Awaitable[None]:
        """The start watch, run on our loop (our own kr8s client) for KubeCluster's loop."""
        assert self._io is not None
        return asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._watch_start(), self._io.loop))

    async def _observe(self) -> list[PodState]:
        """Read the DaskCluster phase and the pods; fix #968's stuck 'Pending'."""
        import kr8s
        from dask_kubernetes.operator._objects import DaskCluster

        name, namespace = self.cluster_name, self.namespace
        found = [c async for c in kr8s.asyncio.get(
            DaskCluster, namespace=namespace, field_selector=f"metadata.name={name}")]
        phase = found[0].raw.get("status", {}).get("phase") if found else None
        self.last_phase = phase
        pods = [PodState.from_pod(p.raw) async for p in kr8s.asyncio.get(
            "pods", namespace=namespace, label_selector=f"dask.org/cluster-name={name}")]
        self._pods, self._pods_read = pods, time.monotonic()
        if phase == "Pending" and found:
            now = time.monotonic()
            self._pending_since = self._pending_since or now
            scheduler_ready = any(p.component == "scheduler" and p.ready for p in pods)
            if scheduler_ready and now - self._pending_since > PENDING_FIX_AFTER:
                await self._fix_pending(found[0])
        else:
            self._pending_since = None
        return pods

    async def _fix_pending(self, cluster: Any) -> None:
        """dask/dask-kubernetes#968: the operator's "Pending" overwrote "Running"."""
        import kr8s
        from kr8s.asyncio.objects import Service

        try:
            service = await Service.get(f"{self.cluster_name}-scheduler",
                                        namespace=self.namespace)
            if service.spec.get("type") == "LoadBalancer" and not (
                    service.status.get("loadBalancer", {}).get("ingress")):
                return  # really pending: the load balancer has no address yet
            await cluster.patch({"status": {"phase": "Running"}})
            if cluster.raw.get("status", {}).get("phase") != "Running":
                # a CRD with a status subresource ignores status in the main resource
                await cluster.patch({"status": {"phase": "Running"}}, subresource="status")
        except (kr8s.NotFoundError, kr8s.ServerError) as exc:
            logger.warning("DaskCluster %s stays Pending (dask/dask-kubernetes#968) and "
                           "could not be set Running: %s", self.cluster_name, exc)
            return
        self.pending_fixed = True
        self.last_phase = "Running"
        logger.warning("DaskCluster %s was stuck in Pending with a ready scheduler "
                       "(dask/dask-kubernetes#968); set it Running", self.cluster_name)

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
            evidence = self._pods_text(pods)
            if stuck:
                evidence += "\n\n" + await collect_evidence(self.namespace or "default",
                                                            stuck[0])
            raise StartTimeoutError(
                f"the kubernetes cluster {self.cluster_name!r} did not start within "
                f"{self.kube.start_timeout:g}s (scalekit.kubernetes.start-timeout); last "
                f"observed DaskCluster phase: {self.last_phase or 'none'}"
                + (" (dask/dask-kubernetes#968: patching it to Running failed)"
                   if self.last_phase == "Pending" and scheduler_ready else "")
                + f"; still waiting for {self._waiting_for(pods)}",
                evidence, self.last_phase)

    def _waiting_for(self, pods: list[PodState]) -> str:
        schedulers = [p for p in pods if p.component == "scheduler"]
        if not schedulers:
            return "the scheduler pod to be created (is the operator running?)"
        if not any(p.phase == "Running" for p in schedulers):
            return ("the scheduler pod to run (Pending: unschedulable, or an image still "
                    "pulling? see the pods below)")
        if not any(p.ready for p in schedulers):
            return "the scheduler to become ready (its /health readiness probe)"
        have = len(self._client.nthreads()) if self._client is not None else 0
        return f"workers to connect ({have} of {self.config.workers})"

    def _wait_for_workers(self) -> None:
        assert self._io is not None and self._client is not None
        next_look = 0.0
        while len(self._client.nthreads()) < self.config.workers:
            if time.monotonic() >= next_look:
                self._io.run(self._watch_start(), timeout=60)
                next_look = time.monotonic() + 1.0
            time.sleep(0.2)

    def _pods_text(self, pods: list[PodState]) -> str:
        if not pods:
            return "no pods of this cluster exist (yet)"
        return "pods:\n" + "\n".join(f"  {p.name}: {p.describe()}"
                                     + (f" - {p.message}" if p.message else "") for p in pods)

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
                    f"{self.last_phase or 'none'})\n\n{self._pods_text(self._pods)}")
        self._cleanup(delete=self._created is not False)  # a kept one we joined stays
        return error

    # -- close -----------------------------------------------------------------------------
    def close(self) -> None:
        """Delete the cluster (unless ``keep_on_shutdown``) and disconnect."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cleanup(delete=not self.kube.keep_on_shutdown)

    def _cleanup(self, delete: bool) -> None:
        self._closed = True
        io, client, cluster = self._io, self._client, self._cluster
        if delete and io is not None and self.cluster_name:
            try:  # first: a kernel shutdown may cut the rest short
                io.run(self._delete(), timeout=10)
            except Exception as exc:
                delete = False  # nothing to wait for below
                logger.warning(
                    "could not delete DaskCluster %s/%s: %s; delete it with `kubectl delete "
                    "daskcluster -n %s %s`", self.namespace, self.cluster_name,
                    translate(exc, namespace=self.namespace) or exc, self.namespace,
                    self.cluster_name)
        for thing in (client, cluster):
            if thing is None:
                continue
            try:
                if isinstance(thing, _KubeCluster):
                    thing.shutdown_on_close = False  # deleted above, or kept
                    thing.close(timeout=max(self.kube.close_timeout, 1))
                else:
                    thing.close()
            except Exception:  # closing must always finish; log what went wrong
                logger.warning("closing %r failed", thing, exc_info=True)
        if delete and io is not None and self.cluster_name and self.kube.close_timeout:
            try:
                io.run(self._wait_gone(), timeout=self.kube.close_timeout)
            except Exception:
                logger.warning("pods of %s/%s were still terminating after %gs",
                               self.namespace, self.cluster_name, self.kube.close_timeout)
        elif self.cluster_name and self.kube.keep_on_shutdown:
            logger.info("keeping kubernetes cluster %s/%s (keep-on-shutdown); delete it with "
                        "`kubectl delete daskcluster -n %s %s`", self.namespace,
                        self.cluster_name, self.namespace, self.cluster_name)
        if io is not None:
            io.stop()

    async def _delete(self) -> None:
        import kr8s
        from dask_kubernetes.operator._objects import DaskCluster

        with contextlib.suppress(kr8s.NotFoundError):
            cluster = await DaskCluster.get(self.cluster_name, namespace=self.namespace,
                                            timeout=1)
            await cluster.delete()

    async def _wait_gone(self) -> None:
        import kr8s

        while True:
            pods = [p async for p in kr8s.asyncio.get(
                "pods", namespace=self.namespace,
                label_selector=f"dask.org/cluster-name={self.cluster_name}")]
            if not pods:
                return
            await asyncio.sleep(0.5)

    # -- scaling ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except KubernetesError:
            raise
        except Exception as exc:
            error = translate(exc, namespace=self.namespace)
            if error is None:
                raise
            raise error from exc

    def scale(self, n: int) -> None:
        with self._translating():
            super().scale(n)

    def adapt(self, bounds: AdaptConfig) -> None:
        """A ``DaskAutoscaler``: the operator asks the scheduler every 5 s."""
        bounds.within(self.config.max_workers)
        cluster = self._running()
        with self._translating():
            cluster.adapt(minimum=bounds.minimum, maximum=bounds.maximum)
        self._adaptive = (bounds.minimum, bounds.maximum)
        self._requested = None

    def stop_adapt(self) -> None:
        self._running()
        assert self._io is not None
        with self._translating():
            replicas = self._io.run(self._delete_autoscaler())
        self._adaptive = None
        self._requested = replicas if replicas is not None else len(self.client.nthreads())

    async def _delete_autoscaler(self) -> int | None:
        import kr8s
        from dask_kubernetes.operator._objects import DaskAutoscaler, DaskWorkerGroup

        with contextlib.suppress(kr8s.NotFoundError):
            autoscaler = await DaskAutoscaler.get(self.cluster_name, namespace=self.namespace,
                                                  timeout=1)
            await autoscaler.delete()
            # the operator holds a finalizer while its autoscaling timer stops; once it is
            # gone no late decision can change the worker count any more
            deadline = time.monotonic() + 15
            while await autoscaler.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        with contextlib.suppress(kr8s.NotFoundError):
            group = await DaskWorkerGroup.get(f"{self.cluster_name}-default",
                                              namespace=self.namespace, timeout=1)
            return int(group.replicas)
        return None

    # -- state -----------------------------------------------------------------------------
    def pods(self, fresh: bool = True) -> list[PodState]:
        """The cluster's pods (scheduler and workers) as the API server has them."""
        if (fresh or time.monotonic() - self._pods_read > DETAILS_TTL) and (
                self._io is not None and not self._closed and self.cluster_name):
            self._pods_read = time.monotonic()  # an unreachable API is not asked at 2 Hz
            with self._translating():
                self._io.run(self._observe(), timeout=10)
        return list(self._pods)

    def _details(self) -> tuple[tuple[str, str], ...]:
        try:
            pods = self.pods(fresh=False)
        except Exception as exc:  # the panel must keep working if the API hiccups
            return (("pods", f"unavailable ({type(exc).__name__})"),)
        running = sum(p.phase == "Running" for p in pods)
        lines = [("cluster", f"{self.namespace}/{self.cluster_name} "
                             f"({self.last_phase or 'unknown'})"),
                 ("pods", f"{running} running, {len(pods) - running} other")]
        ordered = sorted(pods, key=lambda p: (p.component != "scheduler", p.name))
        if len(ordered) > MAX_POD_LINES:  # a big cluster: the scheduler and the troubled
            healthy = [p for p in ordered if p.component != "scheduler" and p.ready
                       and not p.restarts and not p.deleting]
            shown = [p for p in ordered if p not in healthy][:MAX_POD_LINES]
            rest = [p for p in ordered if p not in shown]
            lines += [(p.name, p.describe()) for p in shown]
            lines.append(("other pods", f"{len(rest)} more" + (
                ", all running, ready, 0 restarts" if set(rest) <= set(healthy) else "")))
        else:
            lines += [(p.name, p.describe()) for p in ordered]
        return tuple(lines)
