"""Fast checks without pods: error translation, pod states, scheduler access mode, the
``%scalekit up`` kubernetes options, and the emulated API server's own semantics."""

from __future__ import annotations

import asyncio

import dask.config
import httpx
import pytest
from harness.schema import prune_and_default
from harness.store import ApiError, Store, field_matcher, json_patch, label_matcher, merge_patch
from IPython.core.error import UsageError

from scalekit.backends.kube_errors import (
    ApiUnreachableError,
    ForbiddenError,
    KubeconfigError,
    OperatorMissingError,
    PodState,
    pod_failure,
    request_of,
    translate,
)
from scalekit.config import ClusterConfig, KubernetesConfig
from scalekit.magics import ScalekitMagics, parse

# -- error translation ---------------------------------------------------------------------


def response(method: str, url: str, code: int, message: str = "") -> httpx.Response:
    request = httpx.Request(method, url)
    return httpx.Response(code, json={"kind": "Status", "message": message}, request=request)


class Failed(Exception):
    def __init__(self, resp: httpx.Response) -> None:
        super().__init__(f"HTTP {resp.status_code}")
        self.response = resp


BASE = "https://k8s.example:6443"


@pytest.mark.parametrize(("method", "path", "verb", "resource", "group", "ns"), [
    ("POST", "/apis/kubernetes.dask.org/v1/namespaces/ml/daskclusters", "create",
     "daskclusters", "kubernetes.dask.org", "ml"),
    ("PATCH", "/apis/kubernetes.dask.org/v1/namespaces/ml/daskworkergroups/c-default",
     "patch", "daskworkergroups", "kubernetes.dask.org", "ml"),
    ("GET", "/api/v1/namespaces/ml/pods?labelSelector=a%3Db", "list", "pods", "", "ml"),
    ("GET", "/api/v1/namespaces/ml/pods?watch=true", "watch", "pods", "", "ml"),
    ("GET", "/api/v1/namespaces/ml/pods/p1/log?tailLines=5", "get", "pods/log", "", "ml"),
    ("GET", "/api/v1/namespaces/ml/pods/p1/portforward?ports=8786", "create",
     "pods/portforward", "", "ml"),
    ("DELETE", "/apis/kubernetes.dask.org/v1/namespaces/ml/daskautoscalers/c", "delete",
     "daskautoscalers", "kubernetes.dask.org", "ml"),
    ("GET", "/api/v1/nodes", "list", "nodes", "", None),
])
def test_a_403_names_the_missing_verb_and_resource(method, path, verb, resource, group, ns):
    assert request_of(response(method, BASE + path, 403)) == (verb, resource, group, ns)
    error = translate(Failed(response(method, BASE + path, 403, "is forbidden: ...")))
    assert isinstance(error, ForbiddenError)
    assert (error.verb, error.resource, error.group) == (verb, resource, group)
    assert f"permission {verb!r} on {resource!r}" in str(error)
    assert "Minimum RBAC" in str(error) and "is forbidden" in error.evidence


def test_translations_of_what_the_libraries_raise():
    missing = Failed(response("POST", BASE + "/apis/kubernetes.dask.org/v1/namespaces/a/"
                              "daskclusters", 404, "the server could not find it"))
    assert isinstance(translate(missing), OperatorMissingError)
    no_ns = Failed(response("POST", BASE + "/apis/kubernetes.dask.org/v1/namespaces/nope/"
                            "daskclusters", 404, 'namespaces "nope" not found'))
    assert "namespace does not exist" in str(translate(no_ns))
    refused = httpx.ConnectError("All connection attempts failed",
                                 request=httpx.Request("GET", BASE + "/version/"))
    error = translate(RuntimeError("wrapped").with_traceback(None))
    assert error is None
    wrapped = RuntimeError("start failed")
    wrapped.__cause__ = refused
    error = translate(wrapped)
    assert isinstance(error, ApiUnreachableError) and BASE in str(error)
    assert isinstance(translate(ValueError("Unable to find valid credentials")),
                      KubeconfigError)
    assert isinstance(translate(Failed(response("GET", BASE + "/version/", 401))),
                      KubeconfigError)


def pod(name="p", component="worker", phase="Running", ready=True, restarts=0,
        waiting=None, terminated_last=None, scheduled=True):
    status = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"},
        {"type": "PodScheduled", "status": "True" if scheduled else "False",
         "reason": "" if scheduled else "Unschedulable",
         "message": "" if scheduled else "0/3 nodes are available: 3 Insufficient "
                                         "nvidia.com/gpu."}]}
    container = {"restartCount": restarts, "state": {"running": {}}}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting, "message": "details"}}
    if terminated_last is not None:
        container["lastState"] = {"terminated": {"exitCode": terminated_last}}
    if scheduled:
        status["containerStatuses"] = [container]
    return {"metadata": {"name": name, "labels": {"dask.org/component": component}},
            "status": status}


def test_pod_states_and_which_failures_are_fatal():
    healthy = PodState.from_pod(pod())
    assert not healthy.fatal and healthy.describe() == "Running, ready, 0 restarts"
    crash = PodState.from_pod(pod("s", "scheduler", ready=False, restarts=3,
                                  waiting="CrashLoopBackOff", terminated_last=1))
    assert crash.fatal and "CrashLoopBackOff" in crash.describe()
    assert "last exit code 1" in crash.describe()
    pull = PodState.from_pod(pod(phase="Pending", ready=False, waiting="ImagePullBackOff"))
    assert pull.fatal
    creating = PodState.from_pod(pod(phase="Pending", ready=False, waiting="ContainerCreating"))
    assert not creating.fatal
    unschedulable = PodState.from_pod(pod(phase="Pending", ready=False, scheduled=False))
    assert not unschedulable.fatal  # may get a node later: a timeout reports it
    assert unschedulable.reason == "Unschedulable" and "nvidia.com/gpu" in unschedulable.message
    # the scheduler's failure is reported first
    worker_crash = PodState.from_pod(pod("w", ready=False, restarts=2, waiting="Error"))
    assert pod_failure([healthy, worker_crash, crash]) is crash
    assert pod_failure([healthy, creating]) is None


# -- where the notebook runs ---------------------------------------------------------------


@pytest.mark.parametrize(("setting", "in_cluster", "forward"), [
    ("auto", False, True), ("auto", True, False), (True, True, True), (False, False, False),
])
def test_scheduler_access_mode(monkeypatch, setting, in_cluster, forward):
    from scalekit.backends.kubernetes import KubernetesBackend

    if in_cluster:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    else:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube = KubernetesConfig.from_config(image="x", port_forward=setting)
    assert KubernetesBackend(ClusterConfig(backend="kubernetes"), kube).port_forward is forward


# -- %scalekit up options -------------------------------------------------------------------


def test_up_options_reach_the_kubernetes_config_only_during_up():
    seen = {}

    def factory(**kwargs):
        seen["kwargs"] = kwargs
        seen["kube"] = KubernetesConfig.from_config()
        raise RuntimeError("stop here")  # no cluster needed

    magics = ScalekitMagics(None, factory=factory, display=lambda obj: None)
    command = parse("up --backend kubernetes --image ghcr.io/a/b:1 --namespace ml --keep -n 3")
    assert command.kubernetes_options() == {"image": "ghcr.io/a/b:1", "namespace": "ml",
                                            "keep-on-shutdown": True}
    with pytest.raises(RuntimeError):
        magics.execute(command)
    assert seen["kwargs"] == {"workers": 3, "backend": "kubernetes"}
    assert (seen["kube"].image, seen["kube"].namespace, seen["kube"].keep_on_shutdown) == (
        "ghcr.io/a/b:1", "ml", True)
    assert dask.config.get("scalekit.kubernetes.image") is None  # only during the call
    with pytest.raises(UsageError, match="add `--backend kubernetes`"):
        magics.execute(parse("up --image x"))
    assert parse("up").kubernetes_options() == {}


# -- the emulated API server -----------------------------------------------------------------


def test_selectors():
    obj = {"metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}},
           "status": {"phase": "Running"}}
    assert label_matcher("app=x,tier!=db")(obj)
    assert label_matcher("app in (x, y),!missing,tier")(obj)
    assert not label_matcher("app notin (x)")(obj)
    assert field_matcher("metadata.name=a,status.phase=Running")(obj)
    assert not field_matcher("status.phase!=Running")(obj)


def test_patches_and_structural_pruning():
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}}
    assert json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2},
                                   {"op": "replace", "path": "/b", "value": 3}]) == {
        "a": [1, 2], "b": 3}
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "env": {"type": "array", "items": {"type": "object"}},
            "idleTimeout": {"type": "integer", "default": 0},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}}
    assert prune_and_default({"spec": {"env": None, "unknown": 1, "labels": {"a": "b"}}},
                             schema) == {"spec": {"labels": {"a": "b"}, "idleTimeout": 0}}


def test_watches_replay_from_a_resource_version_and_finalizers_delay_deletion():
    async def scenario():
        store = Store()
        ns = store.kind("", "v1", "namespaces")
        store.create(ns, None, {"metadata": {"name": "default"}})
        cms = store.kind("", "v1", "configmaps")
        store.create(cms, "default", {"metadata": {"name": "a", "labels": {"x": "1"}}})
        listed_at = str(store.rv)
        store.create(cms, "default", {"metadata": {"name": "b", "labels": {"x": "1"}}})
        store.patch(cms, "default", "a", {"metadata": {"finalizers": ["f"]}},
                    "application/merge-patch+json")
        watch = store.watch(cms, "default", "x=1", None, listed_at)  # after the list
        store.delete(cms, "default", "a")  # held by its finalizer
        assert store.get(cms, "default", "a")["metadata"]["deletionTimestamp"]
        store.patch(cms, "default", "a", {"metadata": {"finalizers": None}},
                    "application/merge-patch+json")
        events = []
        while not watch.queue.empty():
            event = watch.queue.get_nowait()
            events.append((event["type"], event["object"]["metadata"]["name"]))
        assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("MODIFIED", "a"),
                          ("MODIFIED", "a"), ("DELETED", "a")]
        with pytest.raises(ApiError) as info:
            store.get(cms, "default", "a")
        assert info.value.code == 404

    asyncio.run(scenario())


def test_snapshot_details_of_a_big_cluster_list_the_scheduler_and_troubled_pods(monkeypatch):
    from scalekit.backends import kubernetes

    backend = kubernetes.KubernetesBackend(ClusterConfig(backend="kubernetes"),
                                           KubernetesConfig.from_config(image="x"))
    backend.cluster_name, backend.namespace, backend.last_phase = "c", "ml", "Running"
    pods = [PodState.from_pod(pod("c-scheduler", "scheduler"))]
    pods += [PodState.from_pod(pod(f"c-worker-{i:02d}")) for i in range(12)]
    pods.append(PodState.from_pod(pod("c-worker-99", ready=False, restarts=1,
                                      waiting="CrashLoopBackOff")))
    monkeypatch.setattr(backend, "pods", lambda fresh=True: pods)
    details = dict(backend._details())
    assert details["cluster"] == "ml/c (Running)"
    assert details["pods"] == "14 running, 0 other"
    assert "c-scheduler" in details and "CrashLoopBackOff" in details["c-worker-99"]
    assert "c-worker-00" not in details
    assert details["other pods"] == "12 more, all running, ready, 0 restarts"
    few = pods[:3]
    monkeypatch.setattr(backend, "pods", lambda fresh=True: few)
    assert [k for k, _ in backend._details()][2:] == ["c-scheduler", "c-worker-00",
                                                      "c-worker-01"]


def test_objects_created_for_an_owner_already_gone_are_garbage_collected():
    async def scenario():
        store = Store()
        store.create(store.kind("", "v1", "namespaces"), None, {"metadata": {"name": "n"}})
        cms = store.kind("", "v1", "configmaps")
        owner = store.create(cms, "n", {"metadata": {"name": "owner"}})
        ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner["metadata"]["uid"]}]
        store.create(cms, "n", {"metadata": {"name": "child", "ownerReferences": ref}})
        store.delete(cms, "n", "owner")
        assert store.list(cms, "n") == []  # the child went with its owner
        # an operator that still acts on the deleted owner creates a dependent late
        store.create(cms, "n", {"metadata": {"name": "late", "ownerReferences": ref}})
        await asyncio.sleep(0)
        assert store.list(cms, "n") == []

    asyncio.run(scenario())


def test_a_pod_list_read_by_another_thread_is_awaited_not_served_stale(monkeypatch):
    """Issue 13, item 20: the panel's sampler and a cell look at the pods at once (just
    after a start or a scale); the second caller must get the list being read, not the
    one it replaces."""
    import threading

    from scalekit.backends import kubernetes
    from scalekit.backends.kube_cluster import IoLoop

    backend = kubernetes.KubernetesBackend(ClusterConfig(backend="kubernetes"),
                                           KubernetesConfig.from_config(image="x"))
    old, new = PodState.from_pod(pod("s", "scheduler", ready=False)), PodState.from_pod(
        pod("s", "scheduler"))
    backend.cluster_name, backend._pods, backend._io = "c", [old], IoLoop()
    reading = threading.Event()

    async def observe(started: bool = False):
        reading.set()
        await asyncio.sleep(0.5)
        backend._pods = [new]
        return backend._pods

    monkeypatch.setattr(backend, "_observe", observe)
    try:
        first = threading.Thread(target=backend.pods, kwargs={"fresh": True})
        first.start()
        assert reading.wait(5)
        assert backend.pods(fresh=False) == [new]
        first.join(5)
    finally:
        backend._io.stop()
