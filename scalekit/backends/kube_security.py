"""Who may talk to a kubernetes cluster: its own certificate authority, the Secret that
carries the certificates to the pods, and the NetworkPolicy that admits only the
cluster's own pods, the notebook and the Dask operator.

Every cluster gets a fresh CA. The CA signs one certificate each for the scheduler, the
workers and the notebook's client, and its private key is then dropped: nobody, scalekit
included, can sign another certificate for that cluster. Dask's TLS is mutual (each side
presents a certificate signed by the cluster's CA), so reaching the scheduler's port is
not enough to submit work: a caller also needs a key from the cluster's Secret.

Everything here is pure (certificates and manifests in, nothing sent), except
:func:`in_cluster_namespace`, which reads the service account's namespace file.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # distributed is imported where a Security object is made
    from distributed.security import Security

CERT_DIR = "/etc/scalekit/tls"  # where scheduler and worker containers find their files
VOLUME = "scalekit-tls"
CERT_DAYS = 365  # a kept cluster outliving this needs a new start
CLOCK_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: node clocks differ
FILE_MODE = 0o444  # secret files are root-owned; images run as another user (docs/Dockerfile)
ROLES = ("scheduler", "worker", "client")
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787
# the Helm chart's pod label of the operator: it calls the scheduler's HTTP API (8787)
OPERATOR_LABELS = {"app.kubernetes.io/name": "dask-kubernetes-operator"}
CLUSTER_LABEL = "dask.org/cluster-name"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# labels that change with every rollout of the notebook's own controller
VOLATILE_LABELS = ("pod-template-hash", "controller-revision-hash",
                   "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index")


def secret_name(cluster: str) -> str:
    """The name of the cluster's TLS Secret."""
    return f"{cluster}-tls"


def files_of(role: str) -> tuple[str, str, str]:
    """The Secret's keys a ``role`` needs: CA certificate, own certificate, own key."""
    return "ca.crt", f"{role}.crt", f"{role}.key"


@dataclasses.dataclass(frozen=True, repr=False)
class ClusterCertificates:
    """The PEM files of one cluster: ``ca.crt`` and ``<role>.crt``/``<role>.key`` for the
    scheduler, the workers and the client (the CA's key is not kept)."""

    files: dict[str, str]

    def __repr__(self) -> str:  # never print private keys
        return f"ClusterCertificates({sorted(self.files)}, keys hidden)"

    def security(self) -> Security:
        """The notebook's side: a ``distributed.security.Security`` with the client's
        certificate and key, held in memory (not written to the notebook's disk)."""
        from distributed.security import Security

        ca, cert, key = (self.files[f] for f in files_of("client"))
        return Security(require_encryption=True, tls_ca_file=ca, tls_client_cert=cert,
                        tls_client_key=key)

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data``: every file, base64-encoded."""
        return {name: base64.b64encode(text.encode()).decode()
                for name, text in sorted(self.files.items())}

    @classmethod
    def from_secret(cls, data: dict[str, str]) -> ClusterCertificates:
        """Read a Secret's ``data`` back (reconnecting to a kept cluster)."""
        files = {name: base64.b64decode(value).decode() for name, value in data.items()}
        missing = {f for role in ROLES for f in files_of(role)} - set(files)
        if missing:
            raise ValueError(f"the TLS Secret lacks {sorted(missing)}")
        return cls(files)


def _names(cluster: str, namespace: str, role: str) -> list[Any]:
    from cryptography import x509

    if role != "scheduler":
        return [x509.DNSName(f"{cluster}-{role}")]
    service = f"{cluster}-scheduler"
    dns = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
           f"{service}.{namespace}.svc.cluster.local", "localhost"]
    # a port-forward reaches the scheduler at 127.0.0.1 (Dask does not check host names,
    # other TLS clients of the scheduler may)
    return [*(x509.DNSName(d) for d in dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def generate(cluster: str, namespace: str, *, days: int = CERT_DAYS,
             now: dt.datetime | None = None) -> ClusterCertificates:
    """A new CA and a certificate per role (ECDSA P-256, SHA-256), valid ``days``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start = (now or dt.datetime.now(dt.timezone.utc)) - CLOCK_SKEW
    end = start + dt.timedelta(days=days)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scalekit"),
                          x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def usage(*, sign_certs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not sign_certs, content_commitment=False,
                             key_encipherment=False, data_encipherment=False,
                             key_agreement=False, key_cert_sign=sign_certs,
                             crl_sign=sign_certs, encipher_only=False, decipher_only=False)

    def pem(obj: Any) -> str:
        return obj.public_bytes(serialization.Encoding.PEM).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{cluster} CA")
    ca_public = ca_key.public_key()
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_public).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign_certs=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca.crt": pem(ca)}
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        # scheduler and workers both listen and connect; the client only connects
        purposes = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
            [ExtendedKeyUsageOID.SERVER_AUTH] if role != "client" else [])
        cert = (x509.CertificateBuilder().subject_name(name(f"{cluster}-{role}"))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(sign_certs=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
                .add_extension(x509.SubjectAlternativeName(_names(cluster, namespace, role)),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        files[f"{role}.crt"] = pem(cert)
        files[f"{role}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
    return ClusterCertificates(files)


# -- pods ---------------------------------------------------------------------------------


def tls_args(role: str) -> list[str]:
    """``dask scheduler`` / ``dask worker`` options that point at the mounted files."""
    ca, cert, key = (f"{CERT_DIR}/{f}" for f in files_of(role))
    return ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]


def volume(cluster: str, role: str) -> dict[str, Any]:
    """The pod volume holding only ``role``'s files of the cluster's Secret."""
    return {"name": VOLUME, "secret": {
        "secretName": secret_name(cluster), "defaultMode": FILE_MODE,
        "items": [{"key": f, "path": f} for f in files_of(role)]}}


def volume_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": CERT_DIR, "readOnly": True}


# -- objects next to the DaskCluster ------------------------------------------------------


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the DaskCluster: deleting it deletes what points at it.

    No ``blockOwnerDeletion``: setting it needs ``update`` on the owner's finalizers.
    """
    meta = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", "kubernetes.dask.org/v1"),
            "kind": owner.get("kind", "DaskCluster"), "name": meta["name"],
            "uid": meta["uid"]}


def secret_manifest(cluster: str, certs: ClusterCertificates, owner: dict[str, Any],
                    labels: dict[str, str]) -> dict[str, Any]:
    """The Secret that carries the cluster's certificates, owned by its DaskCluster."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(cluster),
                         "labels": {**labels, CLUSTER_LABEL: cluster},
                         "ownerReferences": [owner_reference(owner)]},
            "data": certs.secret_data()}


def notebook_peer(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """A NetworkPolicy peer for the notebook's pod: ``labels`` in ``namespace`` (no
    labels: every pod of that namespace)."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(labels)}}


def stable_labels(labels: dict[str, str]) -> dict[str, str]:
    """A pod's labels without those its controller changes at each rollout."""
    return {k: v for k, v in labels.items() if k not in VOLATILE_LABELS}


def network_policy(cluster: str, owner: dict[str, Any], labels: dict[str, str], *,
                   notebook: dict[str, Any] | None, exposed: bool) -> dict[str, Any]:
    """Ingress to the cluster's pods from: its own pods (any port: Dask, and the training
    ranks' rendezvous and collectives), the notebook's pod when it connects by address
    (``notebook``: scheduler and dashboard ports), the Dask operator (the dashboard port,
    whose HTTP API it uses to retire workers and to read the adaptive target) and, for a
    NodePort or LoadBalancer scheduler (``exposed``), anyone on the scheduler port, where
    mutual TLS is what admits a caller.

    A notebook outside the cluster needs no rule: a port-forward enters the pod through
    the kubelet, and traffic from the pod's node is always allowed.
    """
    port = {"protocol": "TCP"}
    own = {"podSelector": {"matchLabels": {CLUSTER_LABEL: cluster}}}
    ingress: list[dict[str, Any]] = [{"from": [own]}]
    if notebook is not None:
        ingress.append({"from": [notebook], "ports": [
            {**port, "port": SCHEDULER_PORT}, {**port, "port": DASHBOARD_PORT}]})
    ingress.append({"from": [{"namespaceSelector": {},
                              "podSelector": {"matchLabels": dict(OPERATOR_LABELS)}}],
                    "ports": [{**port, "port": DASHBOARD_PORT}]})
    if exposed:
        ingress.append({"ports": [{**port, "port": SCHEDULER_PORT}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": cluster, "labels": {**labels, CLUSTER_LABEL: cluster},
                         "ownerReferences": [owner_reference(owner)]},
            "spec": {"podSelector": {"matchLabels": {CLUSTER_LABEL: cluster}},
                     "policyTypes": ["Ingress"], "ingress": ingress}}


def in_cluster_namespace(default: str) -> str:
    """The namespace of the pod this process runs in (its service account's), or
    ``default`` outside a pod."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or default
    except OSError:
        return default


def pod_name() -> str | None:
    """This pod's name (Kubernetes sets the hostname to it)."""
    return os.environ.get("HOSTNAME") or None
