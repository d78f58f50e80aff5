"""The kubernetes backend's own Kubernetes API requests (kr8s, asyncio).

Each function is one conversation with the API server about one ``DaskCluster``; the
backend runs them on its private loop (:class:`~scalekit.backends.kube_cluster.IoLoop`).
Errors come back as kr8s raised them, except in :func:`preflight`,
:func:`create_cluster` and :func:`create_owned`, which turn them into scalekit's errors
with evidence, and :func:`fix_pending` (the dask/dask-kubernetes#968 work-around) and
:func:`pod_labels`, which log them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from scalekit.backends.kube_errors import (
    KubernetesError,
    OperatorMissingError,
    PodState,
    translate,
)
from scalekit.backends.kube_security import (
    ClusterCertificates,
    generate,
    in_cluster_namespace,
    network_policy,
    notebook_peer,
    pod_name,
    secret_manifest,
    secret_name,
    stable_labels,
)
from scalekit.backends.kube_spec import MANAGED_BY
from scalekit.config import KubernetesConfig

if TYPE_CHECKING:
    from distributed.security import Security

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


async def create_cluster(spec: dict[str, Any], namespace: str | None
                         ) -> dict[str, Any] | None:
    """Create the DaskCluster and return it as the API server has it (its uid owns the
    Secret and NetworkPolicy); None if one of that name exists (a kept cluster)."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskCluster

    cluster = await DaskCluster(spec, namespace=namespace)
    try:
        await cluster.create()
    except kr8s.ServerError as exc:
        if getattr(exc.response, "status_code", None) == 409:
            logger.info("DaskCluster %s/%s exists: connecting to it", namespace,
                        spec.get("metadata", {}).get("name"))
            return None
        raise translate(exc, namespace=namespace) or exc from exc
    return dict(cluster.raw)


async def secure(kube: KubernetesConfig, name: str, namespace: str,
                 created: dict[str, Any] | None, *, forward: bool) -> Security | None:
    """Give a new cluster (``created``, the DaskCluster as created) its certificates,
    Secret and NetworkPolicy, or read a kept one's (``created`` is None: how it was made
    decides, not this config). Returns the client's TLS settings (None: no TLS).

    ``forward``: the notebook reaches the scheduler by port-forward, so the NetworkPolicy
    needs no rule for it; otherwise it admits the notebook's pod.
    """
    if created is None:
        kept = await kept_certificates(name, namespace)
        return None if kept is None else kept.security()
    labels = {**kube.labels, **MANAGED_BY}
    certs = generate(name, namespace) if kube.tls else None
    owned = [] if certs is None else [secret_manifest(name, certs, created, labels)]
    if kube.network_policy:
        peer = None if forward else await find_notebook_peer(kube.notebook_selector,
                                                             namespace)
        owned.append(network_policy(name, created, labels, notebook=peer,
                                    exposed=kube.scheduler_service_type != "ClusterIP"))
    await create_owned(owned, namespace)
    return None if certs is None else certs.security()


async def create_owned(manifests: list[dict[str, Any]], namespace: str | None) -> None:
    """Create the objects that belong to a new DaskCluster (its TLS Secret, its
    NetworkPolicy); their ownerReferences let the garbage collector remove them with it."""
    import kr8s
    from kr8s.asyncio.objects import NetworkPolicy, Secret

    kinds = {"Secret": Secret, "NetworkPolicy": NetworkPolicy}
    for manifest in manifests:
        obj = await kinds[manifest["kind"]](manifest, namespace=namespace)
        try:
            await obj.create()
        except kr8s.ServerError as exc:
            raise translate(exc, namespace=namespace) or exc from exc


async def kept_certificates(name: str, namespace: str | None) -> ClusterCertificates | None:
    """The client's certificates for an existing (kept) cluster: None when its scheduler
    does not use TLS, else read from its Secret."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskCluster
    from kr8s.asyncio.objects import Secret

    try:
        cluster = await DaskCluster.get(name, namespace=namespace)
        containers = cluster.raw["spec"]["scheduler"]["spec"]["containers"]
        if "--tls-cert" not in (containers[0].get("args") or []):
            return None
        secret = await Secret.get(secret_name(name), namespace=namespace)
        return ClusterCertificates.from_secret(secret.raw.get("data") or {})
    except kr8s.NotFoundError as exc:
        raise KubernetesError(
            f"the existing cluster {name!r} uses TLS but its Secret {secret_name(name)!r} "
            "is gone, so the notebook has no certificate to reach it. Delete the cluster "
            f"(`kubectl delete daskcluster -n {namespace} {name}`) and start a new one.",
            str(exc)) from exc
    except ValueError as exc:  # a Secret without the files scalekit wrote
        raise KubernetesError(
            f"the TLS Secret {secret_name(name)!r} of cluster {name!r} cannot be read: "
            f"{exc}. Delete the cluster and start a new one.") from exc
    except kr8s.ServerError as exc:
        raise translate(exc, namespace=namespace) or exc from exc


async def pod_labels(name: str, namespace: str) -> dict[str, str] | None:
    """The labels of pod ``name`` (the notebook's own), or None if it cannot be read."""
    import kr8s
    from kr8s.asyncio.objects import Pod

    try:
        pod = await Pod.get(name, namespace=namespace, timeout=5)
    except (kr8s.NotFoundError, kr8s.ServerError, TimeoutError) as exc:
        logger.info("cannot read the notebook's pod %s/%s: %s", namespace, name, exc)
        return None
    return dict(pod.raw.get("metadata", {}).get("labels") or {})


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

    # listed, not got: kr8s's get of a missing object waits out its timeout
    for autoscaler in [a async for a in kr8s.asyncio.get(
            DaskAutoscaler, namespace=namespace, field_selector=f"metadata.name={name}")]:
        with contextlib.suppress(kr8s.NotFoundError):
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


async def create_autoscaler(name: str | None, namespace: str | None, minimum: int,
                            maximum: int) -> None:
    """Create (or update) the cluster's ``DaskAutoscaler``: the operator then adapts the
    default worker group between ``minimum`` and ``maximum`` from the scheduler's target."""
    import kr8s
    from dask_kubernetes.operator._objects import DaskAutoscaler

    autoscaler = await DaskAutoscaler({
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
        "metadata": {"name": name, "labels": {"dask.org/cluster-name": str(name),
                                              "dask.org/component": "autoscaler"}},
        "spec": {"cluster": name, "minimum": minimum, "maximum": maximum},
    }, namespace)
    try:
        await autoscaler.patch({"spec": {"minimum": minimum, "maximum": maximum}})
    except kr8s.NotFoundError:
        await autoscaler.create()


async def find_notebook_peer(selector: dict[str, str], namespace: str) -> dict[str, Any]:
    """The NetworkPolicy peer of the notebook's pod (inside the cluster): ``selector``'s
    labels, or else the pod's own, in the pod's namespace (its service account's, else
    ``namespace``). A pod that cannot be read admits its whole namespace, with a warning.
    """
    namespace = in_cluster_namespace(namespace)
    labels = dict(selector)
    if not labels:
        name = pod_name()
        found = await pod_labels(name, namespace) if name else None
        labels = stable_labels(found or {})
        if not labels:
            logger.warning(
                "the NetworkPolicy admits every pod of namespace %r to the scheduler: the "
                "notebook's own pod (%s) could not be read. Set "
                "scalekit.kubernetes.notebook-selector to its labels to narrow it.",
                namespace, name)
    return notebook_peer(namespace, labels)
