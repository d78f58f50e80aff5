"""Errors with evidence: each names what is wrong and how to fix it, and a failed start
leaves nothing behind (the ``notebook`` fixture checks: no DaskCluster, pod or process)."""

from __future__ import annotations

import socket

import dask.config
import pytest
from harness import EmulatedCluster, Fault
from kube_support import CRASHING_IMAGE, HANGING_IMAGE, IMAGE, MISSING_IMAGE

from scalekit.backends.kube_errors import (
    ApiUnreachableError,
    ForbiddenError,
    KubeconfigError,
    OperatorMissingError,
    PodFailureError,
    StartTimeoutError,
)
from scalekit.errors import ClusterError, ConfigError
from scalekit.session import active_sessions, cluster

pytestmark = [pytest.mark.timeout(240)]


def start(**settings):
    with dask.config.set({f"scalekit.kubernetes.{k}": v for k, v in settings.items()}):
        return cluster(workers=1, backend="kubernetes")


@pytest.mark.slow
def test_a_crash_looping_image_fails_fast_with_its_logs_and_events(notebook):
    with pytest.raises(PodFailureError) as info:
        start(image=CRASHING_IMAGE)
    error = info.value
    assert isinstance(error, ClusterError)
    # scheduler and workers run the image: whichever pod crash-loops first is reported
    assert "crash-looping" in error.summary and error.pod.component in ("scheduler", "worker")
    assert f"`dask {error.pod.component}`" in error.summary
    assert "docs/kubernetes.md" in error.summary
    # the evidence: the crashed run's last log lines and the pod's events
    assert "ModuleNotFoundError: No module named 'distributed'" in error.evidence
    assert "BackOff" in error.evidence
    assert not active_sessions()


@pytest.mark.slow
def test_an_image_that_cannot_be_pulled_says_so(notebook):
    with pytest.raises(PodFailureError) as info:
        start(image=MISSING_IMAGE)
    assert "cannot pull its image (ImagePullBackOff)" in info.value.summary
    assert f'Failed to pull image "{MISSING_IMAGE}"' in info.value.evidence
    assert "image-pull-secrets" in info.value.summary


@pytest.mark.slow
def test_a_start_timeout_names_the_last_phase_and_the_pods(notebook):
    with pytest.raises(StartTimeoutError) as info:
        start(image=HANGING_IMAGE, **{"start-timeout": "12s"})
    error = info.value
    assert isinstance(error, TimeoutError)
    assert "did not start within 12s" in error.summary
    assert error.phase in ("Created", "Pending", "Running")  # the operator's, not readiness
    assert f"last observed DaskCluster phase: {error.phase}" in error.summary
    assert "waiting for the scheduler to become ready" in error.summary
    assert "scheduler" in error.evidence and "not ready" in error.evidence


def test_a_forbidden_create_names_the_verb_the_resource_and_the_rbac_doc(notebook):
    notebook.fault(Fault("create", "daskclusters", group="kubernetes.dask.org"))
    with pytest.raises(ForbiddenError) as info:
        start()
    error = info.value
    assert (error.verb, error.resource, error.group, error.namespace) == (
        "create", "daskclusters", "kubernetes.dask.org", "scalekit")
    assert "lack RBAC permission 'create' on 'daskclusters'" in error.summary
    assert "Minimum RBAC" in error.summary
    assert "cannot create resource" in error.evidence  # the API server's own words


@pytest.mark.slow
def test_a_forbidden_scale_leaves_the_cluster_working(notebook):
    with cluster(workers=1, backend="kubernetes") as s:
        notebook.fault(Fault("patch", "daskworkergroups"))
        with pytest.raises(ForbiddenError) as info:
            s.scale(2)
        assert (info.value.verb, info.value.resource) == ("patch", "daskworkergroups")
        notebook.clear_faults()
        assert s.client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        notebook.fault(Fault("list", "pods"))
        # the panel keeps rendering when the pod list is refused
        s.backend._pods_read = 0.0
        assert "unavailable" in dict(s.backend.snapshot().details)["pods"]


def test_without_the_operators_crds(tmp_path, monkeypatch):
    with EmulatedCluster(tmp_path, crds=False, operator=False) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
        with pytest.raises(OperatorMissingError) as info:
            start(image=IMAGE)
        assert "are not installed" in info.value.summary
        assert "Install the Dask operator" in info.value.summary


@pytest.mark.slow
def test_without_a_running_operator(tmp_path, monkeypatch):
    with EmulatedCluster(tmp_path, operator=False) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
        with pytest.raises(OperatorMissingError) as info:
            start(image=IMAGE, **{"operator-timeout": "3s"})
        assert "did not act on DaskCluster" in info.value.summary
        assert not kube.dask("daskclusters")  # the failed start removed its resource


def test_without_a_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeconfigError) as info:
        start(image=IMAGE)
    assert "no Kubernetes credentials found" in info.value.summary


def test_an_unreachable_api_server(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: me, user: {token: t}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: me}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(ApiUnreachableError) as info:
        start(image=IMAGE)
    assert f"127.0.0.1:{port}" in info.value.summary
    assert "does not answer" in info.value.summary


def test_no_image_is_a_config_error_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "never-read"))
    with pytest.raises(ConfigError) as info:
        start(image=None)
    assert info.value.field == "scalekit.kubernetes.image"
