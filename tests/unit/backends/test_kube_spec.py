"""The DaskCluster spec builder and the kubernetes config section, without a cluster.

Every manifest is validated against the ``DaskCluster`` CRD schema that dask-kubernetes
ships (its Helm chart's copy, as a cluster has it installed), and checked to contain no
field a real API server would silently prune.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import dask.config
import jsonschema
import pytest
import yaml

from scalekit.backends.kube_spec import (
    GPU_RESOURCE,
    MAX_NAME,
    build_cluster_spec,
    cluster_name,
    dask_setup,
    scheduler_args,
    worker_args,
)
from scalekit.config import ClusterConfig, KubernetesConfig
from scalekit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_dask_config")

dask_kubernetes = pytest.importorskip("dask_kubernetes")
CRD = Path(dask_kubernetes.__file__).parent / (
    "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml")


def _json_schema(node: Any) -> Any:
    """OpenAPI v3 (as in a CRD) -> JSON schema: int-or-string and nullable."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("format", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validator(crd_schema: dict) -> jsonschema.protocols.Validator:
    schema = _json_schema(crd_schema)
    return jsonschema.validators.validator_for(schema)(schema)


def pruned_fields(value: Any, schema: dict | None, path: str = "") -> list[str]:
    """Fields a structural schema does not know (a real API server drops them)."""
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                found += pruned_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned_fields(item, extra, f"{path}.{key}")
            elif key not in ("apiVersion", "kind", "metadata") or path:
                found.append(f"{path}.{key}")
            if item is None:
                found.append(f"{path}.{key} = null")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema.get("items"), f"{path}[{i}]")
    return found


def check(spec: dict, crd_schema: dict, validator: Any) -> None:
    validator.validate({k: v for k, v in spec.items() if k != "metadata"})
    assert pruned_fields(spec, crd_schema) == []


def kube(**kwargs: Any) -> KubernetesConfig:
    return KubernetesConfig.from_config(**{"image": "ghcr.io/you/worker:1.0", **kwargs})


FULL = {
    "resources": {"requests": {"cpu": 2, "memory": "4Gi"},
                  "limits": {"cpu": "2500m", "memory": "6Gi", "gpu": 1}},
    "scheduler_resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    "env": {"MY_SETTING": 3, "TOKEN": "x"},
    "labels": {"team": "ml"},
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "service_account": "dask-workers",
    "image_pull_secrets": ["regcred"],
    "image_pull_policy": "IfNotPresent",
    "scheduler_service_type": "LoadBalancer",
    "idle_timeout": "1 hour",
}


@pytest.mark.parametrize("options", [{}, FULL, {"resources": {"limits": {"gpu": 2}}},
                                     {"scheduler_service_type": "NodePort"}],
                         ids=["defaults", "everything", "gpus", "nodeport"])
@pytest.mark.parametrize("cluster", [
    ClusterConfig(workers=2),
    ClusterConfig(workers=3, threads_per_worker=4, memory_limit="8GiB"),
    ClusterConfig(workers=1, memory_limit=None),
], ids=["auto-memory", "explicit-memory", "no-memory-limit"])
def test_specs_are_valid_for_the_operators_crd(crd_schema, validator, options, cluster):
    spec = build_cluster_spec(kube(**options), cluster, "scalekit-me-abc123")
    check(spec, crd_schema, validator)
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    assert spec["spec"]["worker"]["replicas"] == cluster.workers


def test_the_check_catches_what_a_real_api_server_rejects_or_prunes(crd_schema, validator):
    spec = build_cluster_spec(kube(), ClusterConfig(), "c")
    wrong_type = copy.deepcopy(spec)
    wrong_type["spec"]["worker"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": 2}}
    with pytest.raises(jsonschema.ValidationError):
        check(wrong_type, crd_schema, validator)
    # dask-kubernetes' own generated spec: `env: null` (pruned by a real server) and
    # commands that distributed no longer has
    from dask_kubernetes.operator.kubecluster.kubecluster import make_cluster_spec

    upstream = make_cluster_spec("c", image="x", n_workers=1)
    assert ".spec.worker.spec.containers[0].env = null" in pruned_fields(upstream, crd_schema)
    assert upstream["spec"]["worker"]["spec"]["containers"][0]["args"][0] == "dask-worker"


def test_the_commands_exist_in_current_distributed():
    spec = build_cluster_spec(kube(), ClusterConfig(threads_per_worker=3), "c")
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    assert scheduler["args"][:2] == ["dask", "scheduler"] == scheduler_args()[:2]
    assert worker["args"][:2] == ["dask", "worker"]
    flat = " ".join(scheduler["args"] + worker["args"])
    assert "dask-scheduler" not in flat and "dask-worker" not in flat
    assert "--host 0.0.0.0" in " ".join(scheduler["args"])
    # the operator fills DASK_WORKER_NAME and DASK_SCHEDULER_ADDRESS in
    assert worker["args"][2:4] == ["--name", "$(DASK_WORKER_NAME)"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "3"
    assert ["--preload-nanny", "scalekit.backends.kube_spec"] == worker["args"][
        worker["args"].index("--preload-nanny"):worker["args"].index("--preload-nanny") + 2]
    # the scheduler's readiness probe is what KubeCluster waits for
    assert scheduler["readinessProbe"]["httpGet"] == {"port": "http-dashboard",
                                                      "path": "/health"}
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = spec["spec"]["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": "c",
                                   "dask.org/component": "scheduler"}
    assert {p["name"] for p in service["ports"]} == {"tcp-comm", "http-dashboard"}


def test_memory_limit_maps_to_the_worker_flag_and_the_container_limit():
    auto = worker_args(ClusterConfig(memory_limit="auto"))
    assert "--memory-limit" not in auto  # dask reads the container's cgroup limit
    assert worker_args(ClusterConfig(memory_limit=None))[-2:] == ["--memory-limit", "0"]
    spec = build_cluster_spec(kube(), ClusterConfig(memory_limit="2GiB"), "c")
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][-2:] == ["--memory-limit", str(2 * 2**30)]
    assert worker["resources"] == {"requests": {"cpu": "1", "memory": str(2 * 2**30)},
                                   "limits": {"memory": str(2 * 2**30)}}


def test_worker_pods_run_without_dasks_profiler_unless_asked():
    def worker_env(**options):
        spec = build_cluster_spec(kube(), ClusterConfig(**options), "c")
        (worker,) = spec["spec"]["worker"]["spec"]["containers"]
        return {e["name"]: e["value"] for e in worker["env"]}

    assert worker_env()["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] == "False"
    assert "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED" not in worker_env(profile=True)


def test_resources_gpus_and_scheduling():
    spec = build_cluster_spec(kube(**FULL), ClusterConfig(threads_per_worker=2), "c")
    worker_pod = spec["spec"]["worker"]["spec"]
    (worker,) = worker_pod["containers"]
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2500m", "memory": "6Gi", GPU_RESOURCE: "1"},
    }
    assert worker["args"][-2:] == ["--resources", "GPU=1"]
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    for pod in (worker_pod, spec["spec"]["scheduler"]["spec"]):
        assert pod["serviceAccountName"] == "dask-workers"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env["MY_SETTING"] == "3" and env["TOKEN"] == "x"
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    for part in ("worker", "scheduler"):
        assert spec["spec"][part]["metadata"]["labels"] == {
            "team": "ml", "app.kubernetes.io/managed-by": "scalekit"}
    assert spec["spec"]["scheduler"]["service"]["type"] == "LoadBalancer"
    assert spec["spec"]["idleTimeout"] == 3600
    assert worker["image"] == scheduler["image"] == "ghcr.io/you/worker:1.0"


def test_default_cpu_request_follows_the_threads_and_nothing_else_is_set():
    spec = build_cluster_spec(kube(), ClusterConfig(threads_per_worker=4), "c")
    worker_pod = spec["spec"]["worker"]["spec"]
    assert worker_pod["containers"][0]["resources"] == {"requests": {"cpu": "4"}}
    assert set(worker_pod) == {"containers", "volumes"}  # volumes: the TLS Secret's files
    assert [v["secret"]["secretName"] for v in worker_pod["volumes"]] == ["c-tls"]
    assert "resources" not in spec["spec"]["scheduler"]["spec"]["containers"][0]


def test_a_spec_does_not_share_mutable_parts_with_the_config():
    config = kube(**FULL)
    before = copy.deepcopy(config)
    spec = build_cluster_spec(config, ClusterConfig(), "c")
    spec["spec"]["worker"]["spec"]["tolerations"][0]["key"] = "changed"
    spec["spec"]["worker"]["metadata"]["labels"]["team"] = "changed"
    assert config == before


def test_without_an_image_the_error_says_how_to_set_one():
    with pytest.raises(ConfigError) as info:
        build_cluster_spec(KubernetesConfig.from_config(), ClusterConfig(), "c")
    assert info.value.field == "scalekit.kubernetes.image"
    assert "--image" in str(info.value)


@pytest.mark.parametrize(("template", "user", "expected"), [
    ("scalekit-{user}-{uuid}", "ana", "scalekit-ana-abc123"),
    ("scalekit-{user}-{uuid}", "Ana.Lopez@corp", "scalekit-ana-lopez-corp-abc123"),
    ("my-cluster", "ana", "my-cluster"),
    ("{user}", "_x_", "x"),
])
def test_cluster_names(template, user, expected):
    assert cluster_name(template, user=user, token="abc123") == expected


def test_long_names_keep_their_unique_tail():
    name = cluster_name("scalekit-{user}-{uuid}", user="a" * 80, token="abc123")
    assert len(name) <= MAX_NAME and name.endswith("-abc123")
    assert cluster_name("scalekit-{user}-{uuid}", user="b") != cluster_name(
        "scalekit-{user}-{uuid}", user="b")


@pytest.mark.parametrize("template", ["{nope}", "---", "{0}"])
def test_bad_name_templates(template):
    with pytest.raises(ConfigError) as info:
        cluster_name(template, user="ana", token="abc123")
    assert info.value.field == "scalekit.kubernetes.name"


# -- the config section ---------------------------------------------------------------------


def test_kubernetes_defaults_come_from_the_yaml():
    config = KubernetesConfig.from_config()
    assert config == KubernetesConfig()
    assert config.image is None and config.port_forward == "auto"
    assert config.start_timeout == 300.0 and config.operator_timeout == 30.0
    assert dask.config.get("scalekit.kubernetes.resources.limits.gpu") == 0


def test_environment_variables_reach_the_kubernetes_section(monkeypatch):
    monkeypatch.setenv("DASK_SCALEKIT__KUBERNETES__IMAGE", "ghcr.io/x/y:2")
    monkeypatch.setenv("DASK_SCALEKIT__KUBERNETES__RESOURCES__LIMITS__GPU", "2")
    monkeypatch.setenv("DASK_SCALEKIT__KUBERNETES__KEEP_ON_SHUTDOWN", "true")
    dask.config.refresh()
    config = KubernetesConfig.from_config()
    assert config.image == "ghcr.io/x/y:2" and config.keep_on_shutdown is True
    assert config.resources == {"limits": {"gpu": "2"}}


VALID = [
    ({"namespace": "ml-team"}, "namespace", "ml-team"),
    ({"port_forward": "AUTO"}, "port_forward", "auto"),
    ({"port_forward": "false"}, "port_forward", False),
    ({"port_forward": True}, "port_forward", True),
    ({"image_pull_secrets": "one"}, "image_pull_secrets", ["one"]),
    ({"env": {"A": 1, "B": None}}, "env", {"A": "1"}),
    ({"start_timeout": "10 minutes"}, "start_timeout", 600.0),
    ({"resources": {"limits": {"gpu": 0, "cpu": None}}}, "resources", {}),
    ({"resources": {"requests": {"cpu": 0.5}}}, "resources", {"requests": {"cpu": "0.5"}}),
]


@pytest.mark.parametrize(("kwargs", "attr", "value"), VALID)
def test_valid_kubernetes_settings(kwargs, attr, value):
    assert getattr(KubernetesConfig.from_config(**kwargs), attr) == value


INVALID = [
    ({"image": "has space:1"}, "scalekit.kubernetes.image"),
    ({"namespace": "Not_Valid"}, "scalekit.kubernetes.namespace"),
    ({"resources": {"limit": {}}}, "scalekit.kubernetes.resources"),
    ({"resources": {"limits": {"gpus": 1}}}, "scalekit.kubernetes.resources.limits"),
    ({"resources": {"limits": {"memory": "4 GB"}}},
     "scalekit.kubernetes.resources.limits.memory"),
    ({"resources": {"limits": {"gpu": 1.5}}}, "scalekit.kubernetes.resources.limits.gpu"),
    ({"scheduler_resources": {"limits": {"gpu": 1}}},
     "scalekit.kubernetes.scheduler-resources.limits"),
    ({"tolerations": [{"key": "a", "bogus": 1}]}, "scalekit.kubernetes.tolerations"),
    ({"image_pull_policy": "Sometimes"}, "scalekit.kubernetes.image-pull-policy"),
    ({"scheduler_service_type": "Ingress"}, "scalekit.kubernetes.scheduler-service-type"),
    ({"port_forward": "maybe"}, "scalekit.kubernetes.port-forward"),
    ({"keep_on_shutdown": "perhaps"}, "scalekit.kubernetes.keep-on-shutdown"),
    ({"start_timeout": "0s"}, "scalekit.kubernetes.start-timeout"),
    ({"env": ["A=1"]}, "scalekit.kubernetes.env"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID)
def test_invalid_kubernetes_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        KubernetesConfig.from_config(**kwargs)
    assert info.value.field == field


# -- the worker pods' nanny preload -------------------------------------------------------------


class FakeNanny:
    def __init__(self, nthreads: int) -> None:
        self.nthreads = nthreads
        self.env = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
        self.pre_spawn_env = {"MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONHASHSEED": "6640"}


def test_the_nanny_preload_gives_workers_a_torch_friendly_environment(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    nanny = FakeNanny(3)
    dask_setup(nanny)
    assert "MALLOC_TRIM_THRESHOLD_" not in nanny.env
    assert nanny.pre_spawn_env == {"PYTHONHASHSEED": "6640"}
    assert nanny.env["OMP_NUM_THREADS"] == nanny.env["MKL_NUM_THREADS"] == "3"
