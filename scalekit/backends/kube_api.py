"""The kubernetes backend's own Kubernetes API requests (kr8s, asyncio).

Each function is one conversation with the API server about one ``DaskCluster``; the
backend runs them on its private loop (:class:`~scalekit.backends.kube_cluster.IoLoop`).
Errors come back as kr8s raised them, except in :func:`preflight` and
:func:`create_cluster`, which turn them into scalekit's errors with evidence, and
:func:`fix_pending` (the dask/dask-kubernetes#968 work-around), which logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from scalekit.backends.kube_errors import OperatorMissingError, PodState, translate

logger = logging.getLogger(__name__)

DASK_RESOURCES = frozenset({"daskclusters", "daskworkergroups", "daskautoscalers"})


def _cluster_pods(name: str | None) -> str:
    return f"dask.org/cluster-name={name}"


async def preflight(namespace: str | None) -> str:
    """Credentials, API server, the operator's CRDs; returns the namespace to use
    (``namespace``, or the kubeconfig's / the pod's when it is ``None``)."""
    import kr8s

    try:
        api = await kr8s.asyncio.api()
        namespace_used = namespace or api.namespace
        async with api.call_api("GET", version="", base="/apis",
                                url="kubernetes.dask.org/v1") as response:
            resources = {r["name"] for r in response.json().get("resources", [])}
    except Exception as exc:
        error = translate(exc, namespace=namespace)
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
    missing = DASK_RESOURCES - resources
    if missing:
        raise OperatorMissingError(
            f"the Dask operator's CRDs are incomplete (missing {sorted(missing)}); "
            "reinstall the operator (see docs/kubernetes.md, section 'Install the Dask "
            "operator').")
    return namespace_used


async def create_cluster(spec: dict[str, Any], namespace: str | None) -> bool:
    """Create the DaskCluster; False if one of that name exists (a kept cluster)."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskCluster

    cluster = await DaskCluster(spec, namespace=namespace)
    try:
        await cluster.create()
    except kr8s.ServerError as exc:
        if getattr(exc.response, "status_code", None) == 409:
            logger.info("DaskCluster %s/%s exists: connecting to it", namespace,
                        spec.get("metadata", {}).get("name"))
            return False
        raise translate(exc, namespace=namespace) or exc from exc
    return True


async def read_cluster(name: str | None, namespace: str | None
                       ) -> tuple[Any | None, str | None, list[PodState]]:
    """The DaskCluster object (None: not found), its ``status.phase``, and its pods."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskCluster

    found = [c async for c in kr8s.asyncio.get(
        DaskCluster, namespace=namespace, field_selector=f"metadata.name={name}")]
    phase = found[0].raw.get("status", {}).get("phase") if found else None
    pods = [PodState.from_pod(p.raw) async for p in kr8s.asyncio.get(
        "pods", namespace=namespace, label_selector=_cluster_pods(name))]
    return (found[0] if found else None), phase, pods


async def fix_pending(cluster: Any, name: str | None, namespace: str | None) -> bool:
    """dask/dask-kubernetes#968: the operator's "Pending" overwrote "Running" on a cluster
    whose scheduler is ready; set ``Running`` as the fixed operator would. True if done;
    False when it is really pending (a LoadBalancer without address) or the patch failed."""
    import kr8s
    from kr8s.asyncio.objects import Service

    try:
        service = await Service.get(f"{name}-scheduler", namespace=namespace)
        if service.spec.get("type") == "LoadBalancer" and not (
                service.status.get("loadBalancer", {}).get("ingress")):
            return False  # really pending: the load balancer has no address yet
        await cluster.patch({"status": {"phase": "Running"}})
        if cluster.raw.get("status", {}).get("phase") != "Running":
            # a CRD with a status subresource ignores status in the main resource
            await cluster.patch({"status": {"phase": "Running"}}, subresource="status")
    except (kr8s.NotFoundError, kr8s.ServerError) as exc:
        logger.warning("DaskCluster %s stays Pending (dask/dask-kubernetes#968) and "
                       "could not be set Running: %s", name, exc)
        return False
    logger.warning("DaskCluster %s was stuck in Pending with a ready scheduler "
                   "(dask/dask-kubernetes#968); set it Running", name)
    return True


async def delete_cluster(name: str | None, namespace: str | None) -> None:
    """Delete the DaskCluster (the operator's owner references remove the rest)."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskCluster

    with contextlib.suppress(kr8s.NotFoundError):
        cluster = await DaskCluster.get(name, namespace=namespace, timeout=1)
        await cluster.delete()


async def wait_pods_gone(name: str | None, namespace: str | None) -> None:
    """Return once no pod of the cluster is left (the caller bounds the wait)."""
    import kr8s

    while True:
        pods = [p async for p in kr8s.asyncio.get(
            "pods", namespace=namespace, label_selector=_cluster_pods(name))]
        if not pods:
            return
        await asyncio.sleep(0.5)


async def delete_autoscaler(name: str | None, namespace: str | None) -> int | None:
    """Delete the cluster's DaskAutoscaler; return the worker group's replicas after."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskAutoscaler, DaskWorkerGroup

    with contextlib.suppress(kr8s.NotFoundError):
        autoscaler = await DaskAutoscaler.get(name, namespace=namespace, timeout=1)
        await autoscaler.delete()
        # the operator holds a finalizer while its autoscaling timer stops; once it is
        # gone no late decision can change the worker count any more
        deadline = time.monotonic() + 15
        while await autoscaler.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    with contextlib.suppress(kr8s.NotFoundError):
        group = await DaskWorkerGroup.get(f"{name}-default", namespace=namespace, timeout=1)
        return int(group.replicas)
    return None
