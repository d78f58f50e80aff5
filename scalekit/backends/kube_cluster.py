"""The threads and the ``KubeCluster`` under the kubernetes backend.

- :class:`IoLoop`: a private event-loop thread for the backend's own Kubernetes API
  calls (kr8s clients belong to the loop that made them);
- :class:`PortForward`: a kr8s port-forward to the scheduler service on its own thread,
  which, unlike ``KubeCluster``'s own forwards, can be stopped;
- :class:`WatchedKubeCluster`: ``dask_kubernetes.operator.KubeCluster`` whose start is
  watched by the backend, whose scheduler forward is a :class:`PortForward`, whose
  scheduler comms carry the client's TLS certificate, whose adaptive scaling runs in
  this process (training-aware, on the worker group's replicas), and whose failed
  construction or close stops its loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dask_kubernetes.operator import KubeCluster
from distributed.core import Status, rpc
from distributed.deploy import Cluster

if TYPE_CHECKING:
    from distributed.deploy import Adaptive
    from distributed.security import Security

from scalekit.backends.adaptive import WorkerGroupAdaptive
from scalekit.backends.kube_errors import causes
from scalekit.backends.kube_spec import SCHEDULER_PORT

T = TypeVar("T")


class IoLoop:
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


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Stopping a forward cancels its open connections' tasks; asyncio's streams (Python
    3.11) then log each as "Exception in callback ... CancelledError": not an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


BIND_ATTEMPTS = 5


def _free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, as the OS picks it.

    kr8s's own ``local_port="auto"`` probes random ports with ``connect``, which misses
    ports bound by outgoing connections (they are not listening), so its bind can fail
    with EADDRINUSE on a busy machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PortForward:
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
            self._loop.set_exception_handler(_quiet_cancelled)
            try:
                service = await Service.get(self.service, namespace=self.namespace)
                for attempt in range(BIND_ATTEMPTS):
                    try:
                        forward = service.portforward(self.port, local_port=_free_port())
                        async with forward as port:
                            self.local_port = port
                            self._ready.set()
                            await self._stop.wait()
                        return
                    except OSError as exc:
                        # another process took the port between our probe and the bind
                        if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                            raise
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


class WatchedKubeCluster(KubeCluster):
    """``KubeCluster`` whose start is watched, whose forward we own, and whose failed
    construction stops its loop thread.

    Parameters
    ----------
    watch : callable
        Awaited about once a second while ``KubeCluster`` starts; raising ends the start.
    forward : bool
        Reach the scheduler through a :class:`PortForward` (the notebook is outside the
        cluster) instead of ``KubeCluster``'s own address logic.
    security : distributed.security.Security, optional
        The client's TLS certificate for a scheduler that speaks only ``tls://``; a
        ``Client`` on this cluster takes it from ``cluster.security``.
    **kwargs
        For ``KubeCluster``.
    """

    def __init__(self, *, watch: Callable[[], Awaitable[None]], forward: bool,
                 security: Security | None = None, **kwargs: Any) -> None:
        self._scalekit_watch = watch
        self._scalekit_forward_wanted = forward
        self.security = security
        self.scalekit_forward: PortForward | None = None
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

    @property
    def _scheme(self) -> str:
        return "tls" if self.security is not None else "tcp"

    async def _get_scheduler_address(self) -> str:
        if not self._scalekit_forward_wanted:
            address = await super()._get_scheduler_address()  # tcp://<service>.<ns>:8786
            return f"{self._scheme}://{address.split('://', 1)[-1]}"
        forward = PortForward(f"{self.name}-scheduler", self.namespace, SCHEDULER_PORT)
        self.scalekit_forward = forward
        port = await asyncio.get_running_loop().run_in_executor(None, forward.start)
        return f"{self._scheme}://127.0.0.1:{port}"

    async def _create_cluster(self) -> None:
        # the backend creates the DaskCluster (and its Secret) before KubeCluster starts;
        # upstream would re-create a vanished one from the spec, without its Secret
        raise RuntimeError(f"DaskCluster {self.name!r} disappeared while it was starting")

    async def _connect_cluster(self) -> None:
        """Upstream's connect, with the client's TLS arguments on the scheduler comms:
        upstream's ``wait_for_scheduler_comm`` and ``rpc`` pass none, which a ``tls://``
        scheduler refuses ("TLS expects a `ssl_context` argument")."""
        from dask_kubernetes.operator._objects import DaskCluster
        from dask_kubernetes.operator.kubecluster.kubecluster import wait_for_service
        from dask_kubernetes.operator.networking import (
            get_scheduler_address,
            wait_for_scheduler,
        )

        if self.shutdown_on_close is None:
            self.shutdown_on_close = False
        cluster = await DaskCluster.get(self.name, namespace=self.namespace)
        container = cluster.spec.worker.spec.containers[0]
        self.image, self.n_workers = container.image, cluster.replicas
        self.resources = container.get("resources")
        self.env = container.get("env") or {}
        self.jupyter = False
        await wait_for_scheduler(self.name, self.namespace, timeout=self._resource_timeout)
        await wait_for_service(f"{self.name}-scheduler", self.namespace)
        address = await self._get_scheduler_address()
        args = self.security.get_connection_args("client") if self.security else {}
        # the pod is ready when its dashboard answers, which it does before the scheduler
        # listens; through a forward, a port not listening yet ends the TLS handshake
        # with an EOF: retried, as upstream retries a refused TCP connection
        while True:
            try:
                async with rpc(address, connection_args=args) as comm:
                    await comm.versions()
                break
            except OSError as exc:  # distributed's comm errors are OSErrors
                if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(exc)):
                    raise  # the scheduler's certificate is not the cluster's: no retry
                await asyncio.sleep(0.1)
        self.scheduler_comm = rpc(address, connection_args=args)
        dashboard = await get_scheduler_address(
            f"{self.name}-scheduler", self.namespace, port_name="http-dashboard",
            port_forward_cluster_ip=self.port_forward_cluster_ip)
        self.forwarded_dashboard_port = dashboard.split(":")[-1]

    def adapt(self, Adaptive: type[Adaptive] = WorkerGroupAdaptive,  # type: ignore[override]
              **kwargs: Any) -> Adaptive:
        """Adaptive scaling decided in this process, as ``distributed.deploy.Cluster``
        runs it, on the worker group's replicas (:class:`WorkerGroupAdaptive`).

        Upstream's ``adapt`` hands the cluster to the operator's ``DaskAutoscaler``, which
        asks only the scheduler: a running fit looks like one busy task per worker to
        it, so it never grows for the fit and may retire a rank mid-epoch.
        """
        return Cluster.adapt(self, Adaptive=Adaptive, **kwargs)

    async def replicas(self) -> int:
        """The default worker group's ``spec.worker.replicas`` (its planned workers)."""
        return int((await self._worker_group()).replicas)

    async def set_replicas(self, n: int) -> None:
        """Patch the worker group's replicas; the operator starts pods or retires the
        workers the scheduler names (the idlest) on its own."""
        await (await self._worker_group()).scale(n)

    async def _worker_group(self) -> Any:
        from dask_kubernetes.operator._objects import DaskWorkerGroup

        return await DaskWorkerGroup.get(f"{self.name}-default", namespace=self.namespace)

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
