"""Pure spec building for the Kubernetes backend: config in, ``DaskCluster`` manifest out.

Nothing here talks to a cluster, so every manifest is unit-tested against the operator's
CRD schema. The scheduler and workers run ``dask scheduler`` / ``dask worker``:
dask-kubernetes' own defaults (``dask-scheduler`` / ``dask-worker``) no longer exist in
current distributed, and pods started with them crash-loop.

Worker pods get the training worker environment of
:mod:`scalekit.backends.worker_environment`, as local workers do: its variables in the
container env, and its nanny set-up through the preload ``--preload-nanny
scalekit.backends.kube_spec`` (:func:`dask_setup`; the name kept clusters' specs carry).
"""

from __future__ import annotations

import getpass
import re
import uuid
from typing import Any

from scalekit.backends.kube_security import (
    DASHBOARD_PORT,
    SCHEDULER_PORT,
    tls_args,
    volume,
    volume_mount,
)
from scalekit.backends.worker_environment import prepare_nanny, thread_env, worker_dask_env
from scalekit.config import ClusterConfig, KubernetesConfig
from scalekit.errors import ConfigError

API_VERSION = "kubernetes.dask.org/v1"
WORKER_DASHBOARD_PORT = 8788
GPU_RESOURCE = "nvidia.com/gpu"
MANAGED_BY = {"app.kubernetes.io/managed-by": "scalekit"}
# the operator names the scheduler "<cluster>-scheduler" and workers
# "<cluster>-default-worker-<10 hex>": those must stay within 63 characters
MAX_NAME = 63 - len("-default-worker-0123456789")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# the scheduler's HTTP API (retire_workers, adaptive_target) that the operator calls
# first; without it, it falls back to RPC
_SCHEDULER_ROUTES = [
    "distributed.http.scheduler.prometheus", "distributed.http.scheduler.info",
    "distributed.http.scheduler.json", "distributed.http.health",
    "distributed.http.proxy", "distributed.http.statics", "distributed.http.scheduler.api",
]


def cluster_name(template: str, *, user: str | None = None, token: str | None = None) -> str:
    """Fill ``{user}`` and ``{uuid}`` in and make the result a valid ``DaskCluster`` name."""
    if user is None:
        try:
            user = getpass.getuser()
        except Exception:  # no user database entry (some containers)
            user = "user"
    token = token or uuid.uuid4().hex[:6]
    try:
        name = template.format(user=user, uuid=token)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError("scalekit.kubernetes.name", template,
                          "a name or a template using only {user} and {uuid}") from exc
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if len(name) > MAX_NAME:  # keep the unique tail when a long user name is cut
        name = (name[: MAX_NAME - len(token) - 1].rstrip("-") + "-" + token
                if token in name else name[:MAX_NAME].rstrip("-"))
    if not _NAME.match(name):
        raise ConfigError("scalekit.kubernetes.name", template,
                          f"a template that gives a lower-case DNS name of at most "
                          f"{MAX_NAME} characters")
    return name


def scheduler_args(tls: bool = False) -> list[str]:
    """``dask scheduler`` on all of the pod's addresses; with ``tls``, only over TLS with
    the mounted certificates (its dashboard stays HTTP: probes and the operator use it)."""
    args = ["dask", "scheduler", "--host", "0.0.0.0", "--port", str(SCHEDULER_PORT),
            "--dashboard-address", f":{DASHBOARD_PORT}"]
    if tls:
        args += ["--protocol", "tls", *tls_args("scheduler")]
    return args


def scheduler_address(cluster: str, namespace: str | None, tls: bool) -> str:
    """The scheduler's address inside the cluster (its service's DNS name)."""
    host = f"{cluster}-scheduler" + (f".{namespace}.svc.cluster.local" if namespace else "")
    return f"{'tls' if tls else 'tcp'}://{host}:{SCHEDULER_PORT}"


def worker_args(cluster: ClusterConfig, gpus: int = 0, tls: bool = False) -> list[str]:
    """``dask worker``; it finds the scheduler in ``DASK_SCHEDULER_ADDRESS`` and takes
    its protocol (``tls://``) from there."""
    args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)",
            "--nthreads", str(cluster.threads_per_worker),
            "--dashboard", "--dashboard-address", str(WORKER_DASHBOARD_PORT),
            "--preload-nanny", __name__]
    if tls:
        args += tls_args("worker")
    if cluster.memory_limit is None:
        args += ["--memory-limit", "0"]
    elif cluster.memory_limit != "auto":  # "auto" reads the container's memory limit
        args += ["--memory-limit", str(cluster.memory_limit)]
    if gpus:
        args += ["--resources", f"GPU={gpus}"]
    return args


def _resources(resources: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, entries in resources.items():
        for key, value in entries.items():
            out.setdefault(section, {})[GPU_RESOURCE if key == "gpu" else key] = str(value)
    return out


def _worker_resources(kube: KubernetesConfig, cluster: ClusterConfig) -> dict:
    resources = {k: dict(v) for k, v in kube.resources.items()}
    requests = resources.setdefault("requests", {})
    requests.setdefault("cpu", str(cluster.threads_per_worker))
    if isinstance(cluster.memory_limit, int) and not isinstance(cluster.memory_limit, bool):
        resources.setdefault("limits", {}).setdefault("memory", str(cluster.memory_limit))
        requests.setdefault("memory", resources["limits"]["memory"])
    if "gpu" in resources.get("limits", {}):  # GPUs are requested through their limit
        requests.pop("gpu", None)
    return _resources({k: v for k, v in resources.items() if v})


def _env(kube: KubernetesConfig, extra: dict[str, str]) -> list[dict[str, Any]]:
    """Container env: plain values, and ``valueFrom`` references (a Secret's or a
    ConfigMap's key) as they are, so credentials stay out of the DaskCluster."""
    merged: dict[str, Any] = {**extra, **kube.env}
    return [{"name": k, **(dict(v) if isinstance(v, dict) else {"value": v})}
            for k, v in merged.items()]


def _pod_spec(kube: KubernetesConfig, container: dict[str, Any],
              tls: tuple[str, str] | None = None) -> dict[str, Any]:
    """The pod around ``container``; ``tls`` = (cluster, role) mounts that role's files
    of the cluster's TLS Secret."""
    if kube.image_pull_policy:
        container["imagePullPolicy"] = kube.image_pull_policy
    spec: dict[str, Any] = {"containers": [container]}
    if tls is not None:
        container["volumeMounts"] = [volume_mount()]
        spec["volumes"] = [volume(*tls)]
    if kube.service_account:
        spec["serviceAccountName"] = kube.service_account
    if kube.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in kube.image_pull_secrets]
    if kube.node_selector:
        spec["nodeSelector"] = dict(kube.node_selector)
    if kube.tolerations:
        spec["tolerations"] = [dict(t) for t in kube.tolerations]
    return spec


def _http_probe(initial: int, period: int, timeout: int | None = None) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"port": "http-dashboard", "path": "/health"},
                             "initialDelaySeconds": initial, "periodSeconds": period}
    if timeout is not None:
        probe["timeoutSeconds"] = timeout
    return probe


def require_image(kube: KubernetesConfig) -> str:
    """The configured image, or a ConfigError that says how to set one."""
    if not kube.image:
        raise ConfigError(
            "scalekit.kubernetes.image", kube.image,
            "an image with scalekit, torch and this notebook's dask/distributed versions",
            "Pass --image to `%scalekit up` or set scalekit.kubernetes.image "
            "(see docs/kubernetes.md, section 'The image').")
    return kube.image


def build_cluster_spec(kube: KubernetesConfig, cluster: ClusterConfig, name: str,
                       namespace: str | None = None) -> dict[str, Any]:
    """The ``DaskCluster`` manifest for ``cluster`` (worker count, threads, memory) and
    ``kube`` (image, resources, scheduling, labels, TLS).

    With ``kube.tls`` the scheduler and workers speak only TLS, with the certificates of
    the Secret :func:`~scalekit.backends.kube_security.secret_name` names (created next
    to the DaskCluster), and workers are given the ``tls://`` scheduler address in
    ``namespace`` (the operator's default is ``tcp://``).
    """
    require_image(kube)
    labels = {**kube.labels, **MANAGED_BY}
    gpus = int(kube.resources.get("limits", {}).get("gpu", 0))
    tls = kube.tls
    extra = {**thread_env(cluster.threads_per_worker), **worker_dask_env(cluster.profile)}
    secure = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"} if tls else {}
    if tls:
        extra["DASK_SCHEDULER_ADDRESS"] = scheduler_address(name, namespace, tls=True)
    worker_env = _env(kube, {**extra, **secure})
    worker = {
        "name": "worker",
        "image": kube.image,
        "args": worker_args(cluster, gpus, tls=tls),
        "env": worker_env,
        "ports": [{"name": "http-dashboard", "containerPort": WORKER_DASHBOARD_PORT,
                   "protocol": "TCP"}],
    }
    resources = _worker_resources(kube, cluster)
    if resources:
        worker["resources"] = resources
    scheduler = {
        "name": "scheduler",
        "image": kube.image,
        "args": scheduler_args(tls=tls),
        "env": _env(kube, {"DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": repr(
            _SCHEDULER_ROUTES), **secure}),
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _http_probe(0, 1, 300),
        "livenessProbe": _http_probe(15, 20),
    }
    if kube.scheduler_resources:
        scheduler["resources"] = _resources(kube.scheduler_resources)
    selector = {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "idleTimeout": int(kube.idle_timeout),
            "worker": {
                "replicas": cluster.workers,
                "metadata": {"labels": dict(labels)},
                "spec": _pod_spec(kube, worker, (name, "worker") if tls else None),
            },
            "scheduler": {
                "metadata": {"labels": dict(labels)},
                "spec": _pod_spec(kube, scheduler, (name, "scheduler") if tls else None),
                "service": {
                    "type": kube.scheduler_service_type,
                    "selector": selector,
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT,
                         "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
                         "targetPort": "http-dashboard"},
                    ],
                },
            },
        },
    }


def dask_setup(nanny: Any) -> None:
    """Nanny preload in worker pods: the training worker environment for its worker
    process (:func:`~scalekit.backends.worker_environment.prepare_nanny`)."""
    prepare_nanny(nanny)
