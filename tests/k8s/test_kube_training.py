"""Distributed training on worker pods of the emulated cluster, over TLS (the default:
scheduler, workers and notebook speak only mutual TLS, issue 13 item 7).

The ranks rendezvous through a TCPStore that rank 0 hosts at its worker address: the
pod's own IP (127.B.x.y), which the other pods reach, as on a real cluster network.
Checkpoints go to a local folder, which the pods (local processes) share.
"""

from __future__ import annotations

import time

import pytest
import torch
from kube_models import DigitsMLP, digits
from kube_support import IMAGE, assert_nothing_left
from skorch import NeuralNetClassifier
from torch import nn

import scalekit as sk
from scalekit.events import EpochEnded, RankStatus, Recovered, RunFinished
from scalekit.session import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits(copies=2)
FIT_TIMEOUT = 300


def make_net(max_epochs: int) -> NeuralNetClassifier:
    torch.manual_seed(0)
    return NeuralNetClassifier(
        DigitsMLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.1,
        optimizer__momentum=0.9, batch_size=64, max_epochs=max_epochs,
        iterator_train__shuffle=True, train_split=None, verbose=0)


@pytest.fixture(scope="module")
def session(kube, tmp_path_factory):
    """Two worker pods for the module (starting a cluster is the slow part)."""
    import os

    import dask.config


    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    settings = {"scalekit.kubernetes.image": IMAGE, "scalekit.kubernetes.start-timeout": "240s",
                "scalekit.checkpoint.root": str(tmp_path_factory.mktemp("default-ckpt"))}
    try:
        with dask.config.set(settings):
            s = cluster(workers=2, backend="kubernetes")
            try:
                s.wait_for_workers(2, timeout=120)
                yield s
            finally:
                s.close()
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
    assert_nothing_left(kube)


def worker_pod_ips(kube) -> set[str]:
    return {p["status"]["podIP"] for p in kube.pods("dask.org/component=worker")
            if p.get("status", {}).get("podIP")}


def test_fit_on_two_worker_pods(session, kube, tmp_path):
    assert session.scheduler_address.startswith("tls://")
    assert session.client.security.require_encryption
    run = sk.fit(make_net(6), X_TRAIN, Y_TRAIN, cluster=session,
                 checkpoint=str(tmp_path / "ckpt"), show=False)
    assert run.status == "finished"
    assert float(run.net.score(X_TEST, Y_TEST)) > 0.9
    epochs = [e for e in run.events if isinstance(e, EpochEnded)]
    assert [e.epoch for e in epochs] == list(range(1, 7)) and {e.world_size for e in epochs} == {2}
    # both ranks ran, each in its own pod (worker addresses are pod IPs)
    ranks = {e.worker for e in run.events if isinstance(e, RankStatus)}
    assert all(w.startswith("tls://") for w in ranks)
    hosts = {w.split("://")[1].rsplit(":", 1)[0] for w in ranks}
    assert len(hosts) == 2 and hosts <= worker_pod_ips(kube)
    assert list((tmp_path / "ckpt").glob("ckpt-*.pt"))


def test_a_worker_pod_deleted_mid_fit_is_recovered(session, kube, tmp_path):
    run = sk.fit(make_net(10), X_TRAIN, Y_TRAIN, cluster=session,
                 checkpoint=str(tmp_path / "ckpt"), wait=False, show=False)
    try:
        deadline = time.monotonic() + FIT_TIMEOUT
        while not any(isinstance(e, EpochEnded) and e.epoch >= 2 for e in run.events):
            assert not run.done, run.error
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.2)
        victim = sorted(kube.pods("dask.org/component=worker"),
                        key=lambda p: p["metadata"]["name"])[-1]
        kube.delete_pod(victim["metadata"]["name"])  # as `kubectl delete pod` would
        run.wait(timeout=FIT_TIMEOUT)
    finally:
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
    assert run.status == "finished"
    recovered = [e for e in run.events if isinstance(e, Recovered)]
    assert recovered, [type(e).__name__ for e in run.events]
    assert recovered[0].epoch >= 2  # restored from a checkpoint, not from scratch
    assert any(isinstance(e, RunFinished) for e in run.events)
    assert float(run.net.score(X_TEST, Y_TEST)) > 0.9
    # the Deployment replaced the deleted pod: two workers again
    session.wait_for_workers(2, timeout=120)
    assert victim["metadata"]["name"] not in {p["metadata"]["name"] for p in kube.pods()}
