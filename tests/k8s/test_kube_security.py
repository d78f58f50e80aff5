"""A cluster nobody else can drive (issue 13, items 7 and 8), on the emulated cluster:
mutual TLS with a CA per cluster (its certificates in a Secret the pods mount), a
NetworkPolicy that admits only the cluster's pods, the notebook and the operator,
credentials referenced from Secrets instead of written into the DaskCluster, and errors
that never show an ``env`` value.

The emulation cannot enforce a NetworkPolicy: its tests check the object's content.
"""

from __future__ import annotations

import base64
import json
import sys

import dask.config
import pytest
from distributed import Client
from distributed.security import Security
from kube_support import LEAKY_IMAGE

from scalekit.backends.kube_errors import PodFailureError
from scalekit.backends.kube_security import OPERATOR_LABELS
from scalekit.config import ClusterConfig
from scalekit.events import Notice
from scalekit.session import ClusterSession, cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CREDENTIAL = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation example


def start(**settings):
    with dask.config.set({f"scalekit.kubernetes.{k}": v for k, v in settings.items()}):
        return cluster(workers=1, backend="kubernetes")


def owned_by(obj: dict, owner: dict) -> bool:
    return any(ref["uid"] == owner["metadata"]["uid"] and ref["kind"] == "DaskCluster"
               for ref in obj["metadata"].get("ownerReferences") or [])


def network_policies(kube) -> list[dict]:
    return kube.objects("networkpolicies", group="networking.k8s.io")


def create(kube, plural: str, body: dict) -> None:
    kube.call(lambda: kube.store.create(kube.store.kind("", "v1", plural), kube.namespace,
                                        body))


def delete(kube, plural: str, name: str) -> None:
    kube.call(lambda: kube.store.delete(kube.store.kind("", "v1", plural), kube.namespace,
                                        name))


def test_tls_by_default_with_a_ca_per_cluster_and_no_way_in_without_its_certificate(
        notebook):
    kube = notebook
    with cluster(workers=1, backend="kubernetes") as s:
        name = s.backend.cluster_name
        address = s.scheduler_address
        assert address.startswith("tls://127.0.0.1:")  # through the port-forward
        assert all(w.startswith("tls://") for w in s.client.nthreads())
        assert s.client.security.require_encryption
        assert s.client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3

        (dc,) = kube.dask("daskclusters")
        (secret,) = [x for x in kube.objects("secrets") if x["metadata"]["name"] == f"{name}-tls"]
        assert owned_by(secret, dc)  # deleted with the cluster
        files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert set(files) == {"ca.crt", "scheduler.crt", "scheduler.key", "worker.crt",
                              "worker.key", "client.crt", "client.key"}
        # no private key in the DaskCluster, whose spec many more people can read
        assert "PRIVATE KEY" not in json.dumps(dc)
        scheduler = dc["spec"]["scheduler"]["spec"]
        args = scheduler["containers"][0]["args"]
        assert args[args.index("--protocol") + 1] == "tls"
        assert "--tls-key" in args and args[args.index("--tls-key") + 1].endswith(
            "scheduler.key")
        # each pod mounts only its own role's key
        worker = dc["spec"]["worker"]["spec"]
        assert [i["key"] for i in worker["volumes"][0]["secret"]["items"]] == [
            "ca.crt", "worker.crt", "worker.key"]
        env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
        assert env["DASK_SCHEDULER_ADDRESS"] == (
            f"tls://{name}-scheduler.scalekit.svc.cluster.local:8786")

        # mutual TLS: plain TCP, and a caller that trusts the scheduler but holds a
        # certificate of another CA, are refused; the Secret's client certificate is in
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        stranger = Security.temporary()
        with pytest.raises(OSError):
            Client(address, timeout=3, security=Security(
                require_encryption=True, tls_ca_file=files["ca.crt"],
                tls_client_cert=stranger.tls_client_cert,
                tls_client_key=stranger.tls_client_key))
        own = Security(require_encryption=True, tls_ca_file=files["ca.crt"],
                       tls_client_cert=files["client.crt"], tls_client_key=files["client.key"])
        with Client(address, security=own, timeout=10) as other:
            assert len(other.nthreads()) == 1

        (policy,) = network_policies(kube)
        assert policy["metadata"]["name"] == name and owned_by(policy, dc)
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {"dask.org/cluster-name": name}}
        assert spec["policyTypes"] == ["Ingress"]
        own_pods, operator = spec["ingress"]  # outside: the notebook uses the port-forward
        assert own_pods == {"from": [{"podSelector": {"matchLabels": {
            "dask.org/cluster-name": name}}}]}
        assert operator == {"from": [{"namespaceSelector": {}, "podSelector": {
            "matchLabels": OPERATOR_LABELS}}], "ports": [{"protocol": "TCP", "port": 8787}]}
        # the policy selects exactly the cluster's pods
        labels = {p["metadata"]["name"]: p["metadata"]["labels"] for p in kube.pods()}
        assert all(lb["dask.org/cluster-name"] == name for lb in labels.values())
    # the garbage collector took the Secret and the policy with the DaskCluster
    assert not [x for x in kube.objects("secrets") if x["metadata"]["name"] == f"{name}-tls"]
    assert not network_policies(kube)


def test_in_the_cluster_the_policy_admits_the_notebooks_own_pod(notebook, monkeypatch):
    kube = notebook
    labels = {"app": "jupyterhub", "component": "singleuser-server",
              "hub.jupyter.org/username": "ana", "pod-template-hash": "7d9f8"}
    create(kube, "pods", {"metadata": {"name": "jupyter-ana", "labels": labels}, "spec": {
        "containers": [{"name": "notebook", "image": "any", "command": [sys.executable],
                        "args": ["-c", "import time; time.sleep(300)"]}]}})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("HOSTNAME", "jupyter-ana")  # this process plays that pod
    try:
        with kube.in_cluster_dns():
            with start() as s:
                assert s.scheduler_address.startswith("tls://")
                assert s.client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
                (policy,) = network_policies(kube)
    finally:
        kube.delete_pod("jupyter-ana", grace=0)
    # the pod's own labels, without the one its controller changes at each rollout
    stable = {k: v for k, v in labels.items() if k != "pod-template-hash"}
    assert policy["spec"]["ingress"][1] == {
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "scalekit"}},
            "podSelector": {"matchLabels": stable}}],
        "ports": [{"protocol": "TCP", "port": 8786}, {"protocol": "TCP", "port": 8787}]}
    # the namespace selector matches the namespace object's own label
    (ns,) = [n for n in kube.objects("namespaces") if n["metadata"]["name"] == "scalekit"]
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "scalekit"


def test_tls_can_be_turned_off_explicitly_and_then_the_scheduler_stays_inside(notebook):
    kube = notebook
    with start(tls=False) as s:
        assert s.scheduler_address.startswith("tcp://127.0.0.1:")
        assert s.client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        assert not [x for x in kube.objects("secrets")
                    if x["metadata"]["name"].endswith("-tls")]
        assert len(network_policies(kube)) == 1  # still isolated
    with pytest.raises(ValueError, match="ClusterIP while scalekit.kubernetes.tls is false"):
        start(tls=False, **{"scheduler-service-type": "LoadBalancer"})


def test_credentials_come_from_secrets_and_config_maps_not_from_the_daskcluster(notebook):
    kube = notebook
    create(kube, "secrets", {"metadata": {"name": "aws"}, "stringData": {
        "secret-access-key": CREDENTIAL}})
    create(kube, "configmaps", {"metadata": {"name": "storage"}, "data": {
        "bucket": "s3://team-bucket"}})
    env = {"AWS_SECRET_ACCESS_KEY": {"valueFrom": {"secretKeyRef": {
               "name": "aws", "key": "secret-access-key"}}},
           "CHECKPOINT_BUCKET": {"valueFrom": {"configMapKeyRef": {
               "name": "storage", "key": "bucket"}}}}
    try:
        with start(env=env) as s:
            seen = s.client.run(lambda: [__import__("os").environ.get(v) for v in (
                "AWS_SECRET_ACCESS_KEY", "CHECKPOINT_BUCKET")])
            assert list(seen.values()) == [[CREDENTIAL, "s3://team-bucket"]]
            (dc,) = kube.dask("daskclusters")
            assert CREDENTIAL not in json.dumps(dc)
            worker_env = dc["spec"]["worker"]["spec"]["containers"][0]["env"]
            assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": env[
                "AWS_SECRET_ACCESS_KEY"]["valueFrom"]} in worker_env
    finally:
        delete(kube, "secrets", "aws")
        delete(kube, "configmaps", "storage")


def test_a_reference_to_a_missing_secret_fails_fast_and_names_it(notebook):
    env = {"TOKEN": {"valueFrom": {"secretKeyRef": {"name": "nope", "key": "token"}}}}
    with pytest.raises(PodFailureError) as info:
        start(env=env, **{"start-timeout": "60s"})
    error = info.value
    assert error.pod.reason == "CreateContainerConfigError"
    assert 'secret "nope" not found' in error.summary
    assert "Create the Secret or ConfigMap" in error.summary


def test_errors_panels_and_logs_never_show_an_env_value(notebook, caplog):
    config = ClusterConfig.from_config(backend="kubernetes", workers=1)
    session = ClusterSession(config, kubernetes={
        "image": LEAKY_IMAGE, "env": {"AWS_SECRET_ACCESS_KEY": CREDENTIAL}})
    with pytest.raises(PodFailureError) as info:
        session.start()
    error = info.value
    # the pod's log said it twice; the evidence keeps the lines, not the value
    assert "starting with AWS_SECRET_ACCESS_KEY=***" in error.evidence
    assert "KeyError: '***'" in error.evidence
    chain, seen = [], error
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        assert CREDENTIAL not in str(err) and CREDENTIAL not in repr(err.args)
    notice = session.bus.latest(Notice)  # what the panel and the lab sidebar show
    assert notice is not None and notice.level == "error"
    assert "***" in notice.message and CREDENTIAL not in notice.message
    assert CREDENTIAL not in caplog.text
