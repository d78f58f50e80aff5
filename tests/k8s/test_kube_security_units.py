"""Fast checks of the security pieces, without pods: the per-cluster CA and its
certificates (verified with OpenSSL through Python's ssl), the spec's TLS wiring and env
references, the config rules, and masking env values in errors."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from scalekit.backends.kube_errors import (
    KubernetesError,
    mask,
    mask_error,
    secret_values,
)
from scalekit.backends.kube_security import (
    ClusterCertificates,
    generate,
    network_policy,
    notebook_peer,
    stable_labels,
)
from scalekit.backends.kube_spec import build_cluster_spec
from scalekit.config import ClusterConfig, KubernetesConfig
from scalekit.errors import ConfigError

CREDENTIAL = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def certs() -> ClusterCertificates:
    return generate("c1", "ml")


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_every_role_has_a_certificate_of_the_clusters_own_ca(certs):
    ca = load(certs.files["ca.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role, purposes in (("scheduler", {"serverAuth", "clientAuth"}),
                           ("worker", {"serverAuth", "clientAuth"}),
                           ("client", {"clientAuth"})):
        cert = load(certs.files[f"{role}.crt"])
        cert.verify_directly_issued_by(ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {p._name for p in eku} == purposes
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert "PRIVATE KEY" in certs.files[f"{role}.key"]
    sans = load(certs.files["scheduler.crt"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "c1-scheduler.ml.svc.cluster.local" in sans
    # the CA's private key is not kept: nothing can sign another certificate for c1
    assert set(certs.files) == {"ca.crt", "scheduler.crt", "scheduler.key", "worker.crt",
                                "worker.key", "client.crt", "client.key"}
    assert "PRIVATE" not in repr(certs)


def test_the_scheduler_refuses_a_client_certificate_of_another_clusters_ca(certs):
    """Mutual TLS as Dask sets it up (Python's ssl): a caller that trusts the scheduler
    but holds another cluster's certificate does not get in."""
    from distributed.security import Security

    other = generate("c2", "ml")

    def accepted(client: Security) -> bool:
        async def run() -> bool:
            server = Security(require_encryption=True, tls_ca_file=certs.files["ca.crt"],
                              tls_scheduler_cert=certs.files["scheduler.crt"],
                              tls_scheduler_key=certs.files["scheduler.key"])
            served = asyncio.Event()

            async def serve(reader, writer):  # called only after a complete handshake
                served.set()
                writer.close()

            srv = await asyncio.start_server(
                serve, "127.0.0.1", 0, ssl=server.get_listen_args("scheduler")["ssl_context"])
            port = srv.sockets[0].getsockname()[1]
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client.get_connection_args("client")["ssl_context"])
                writer.write(b"x")
                await asyncio.wait_for(reader.read(1), 2)
            except (ssl.SSLError, ConnectionError, TimeoutError):
                pass
            finally:
                srv.close()
            return served.is_set()
        return asyncio.run(run())

    assert accepted(certs.security())
    assert not accepted(Security(require_encryption=True, tls_ca_file=certs.files["ca.crt"],
                                 tls_client_cert=other.files["client.crt"],
                                 tls_client_key=other.files["client.key"]))


def test_the_secret_round_trips_and_a_damaged_one_is_refused(certs):
    assert ClusterCertificates.from_secret(certs.secret_data()).files == certs.files
    data = certs.secret_data()
    del data["client.key"]
    with pytest.raises(ValueError, match="client.key"):
        ClusterCertificates.from_secret(data)


def kube(**kwargs) -> KubernetesConfig:
    return KubernetesConfig.from_config(**{"image": "ghcr.io/you/worker:1.0", **kwargs})


def test_the_spec_runs_tls_with_each_roles_own_files_and_keeps_references():
    env = {"AWS_SECRET_ACCESS_KEY": {"valueFrom": {"secretKeyRef": {"name": "aws",
                                                                    "key": "secret"}}},
           "REGION": "eu-west-1"}
    spec = build_cluster_spec(kube(env=env), ClusterConfig(), "c1", "ml")
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert args[args.index("--tls-cert") + 1] == f"/etc/scalekit/tls/{role}.crt"
        assert args[args.index("--tls-ca-file") + 1] == "/etc/scalekit/tls/ca.crt"
        (volume,) = pod["volumes"]
        assert volume["secret"]["secretName"] == "c1-tls"
        assert {i["key"] for i in volume["secret"]["items"]} == {
            "ca.crt", f"{role}.crt", f"{role}.key"}
        assert container["volumeMounts"] == [{"name": "scalekit-tls",
                                              "mountPath": "/etc/scalekit/tls",
                                              "readOnly": True}]
        entries = {e["name"]: e for e in container["env"]}
        assert entries["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", **env[
            "AWS_SECRET_ACCESS_KEY"]}
        assert entries["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]["value"] == "True"
    scheduler_args = spec["spec"]["scheduler"]["spec"]["containers"][0]["args"]
    assert scheduler_args[scheduler_args.index("--protocol") + 1] == "tls"
    plain = build_cluster_spec(kube(tls=False), ClusterConfig(), "c1", "ml")
    for role in ("scheduler", "worker"):
        pod = plain["spec"][role]["spec"]
        assert "volumes" not in pod and "--tls-cert" not in pod["containers"][0]["args"]


def test_the_network_policy_admits_own_pods_notebook_operator_and_exposed_tls_port():
    owner = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
             "metadata": {"name": "c1", "uid": "u-1"}}
    peer = notebook_peer("hub", stable_labels({"app": "jupyterhub", "pod-template-hash": "x"}))
    policy = network_policy("c1", owner, {}, notebook=peer, exposed=True)
    assert policy["metadata"]["ownerReferences"] == [
        {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster", "name": "c1",
         "uid": "u-1"}]
    own, notebook, operator, exposed = policy["spec"]["ingress"]
    assert "ports" not in own  # Dask and the ranks' rendezvous use any port
    assert notebook["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "hub"}}, "podSelector": {"matchLabels": {
            "app": "jupyterhub"}}}]
    assert [p["port"] for p in operator["ports"]] == [8787]
    assert exposed == {"ports": [{"protocol": "TCP", "port": 8786}]}  # from anywhere: TLS
    inside = network_policy("c1", owner, {}, notebook=None, exposed=False)
    assert len(inside["spec"]["ingress"]) == 2


def test_without_tls_only_a_clusterip_scheduler_is_allowed():
    for exposed in ("NodePort", "LoadBalancer"):
        with pytest.raises(ConfigError) as info:
            kube(tls=False, scheduler_service_type=exposed)
        assert info.value.field == "scalekit.kubernetes.scheduler-service-type"
        assert "tls" in str(info.value)
        assert kube(scheduler_service_type=exposed).tls  # with TLS: allowed
    assert kube(tls="false", scheduler_service_type="ClusterIP").tls is False


@pytest.mark.parametrize("env", [
    {"AWS_SECRET_ACCESS_KEY": [CREDENTIAL]},
    {"AWS_SECRET_ACCESS_KEY": {"value": CREDENTIAL}},
    {"AWS_SECRET_ACCESS_KEY": {"valueFrom": {"secretKeyRef": {"name": "aws"}}},
     "OTHER": CREDENTIAL},
    [f"AWS_SECRET_ACCESS_KEY={CREDENTIAL}"],
])
def test_a_bad_env_setting_never_shows_a_value(env):
    with pytest.raises(ConfigError) as info:
        kube(env=env)
    assert info.value.field.startswith("scalekit.kubernetes.env")
    assert CREDENTIAL not in str(info.value) and CREDENTIAL not in repr(info.value.value)
    assert "secretKeyRef" in str(info.value)


def test_env_references_are_kept_and_values_become_strings():
    ref = {"valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k", "optional": True}}}
    assert kube(env={"A": 1, "B": None, "C": ref}).env == {"A": "1", "C": ref}


def test_masking_env_values_in_errors_and_their_causes():
    env = {"AWS_SECRET_ACCESS_KEY": CREDENTIAL, "DB_PASSWORD": "hunt2", "LEVEL": "info",
           "REF": {"valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}}
    values = secret_values(env)
    assert values == (CREDENTIAL, "hunt2")  # short values only under credential names
    assert mask(f"key={CREDENTIAL} pw=hunt2 level=info", values) == (
        "key=*** pw=*** level=info")
    cause = RuntimeError(f"422: env[0].value: Invalid value: {CREDENTIAL!r}")
    error = KubernetesError(f"could not create it: {cause}", f"log: {CREDENTIAL}")
    error.__cause__ = cause
    mask_error(error, values)
    for err in (error, cause):
        assert CREDENTIAL not in str(err)
    assert CREDENTIAL not in error.summary + error.evidence
    assert error.evidence == "log: ***"


def test_a_cert_file_written_by_distributed_is_not_left_behind(certs):
    """The client's key stays in memory: Security writes it to a private temporary
    folder only while it builds an SSL context."""
    before = set(Path(tempfile.gettempdir()).iterdir())
    certs.security().get_connection_args("client")
    assert set(Path(tempfile.gettempdir()).iterdir()) <= before
