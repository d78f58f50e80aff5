"""GPU workers on a real LocalCluster: one worker per GPU, pinned with
CUDA_VISIBLE_DEVICES, advertising the Dask resource GPU=1, scaling no further than the
GPUs. This machine has no GPU: the machine's GPU list is faked (``visible_gpus``);
everything else (the cluster, the worker processes, their environments, a fit on them)
is real."""

from __future__ import annotations

import os

import pytest

import scalekit as sk
from scalekit.backends import gpus
from scalekit.errors import ConfigError, UsageError

pytestmark = pytest.mark.timeout(180)


def worker_view() -> dict[str, str]:
    return {"env": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


@pytest.fixture
def two_gpu_machine(monkeypatch):
    monkeypatch.setattr(gpus, "visible_gpus", lambda: ["0", "1"])


def by_name(session) -> dict[str, dict]:
    info = session.client.scheduler_info(n_workers=-1)["workers"]
    views = session.client.run(worker_view)
    return {w["name"]: {"resources": w.get("resources"), **views[a]} for a, w in info.items()}


def test_one_pinned_worker_per_gpu_and_scaling_stops_at_the_gpus(two_gpu_machine):
    session = sk.cluster(gpus="auto", memory_limit="1GiB")
    try:
        session.wait_for_workers(2)
        assert session.config.workers == 2 and session.config.max_workers == 2
        assert by_name(session) == {
            "0": {"resources": {"GPU": 1}, "env": "0,1"},  # its own GPU is cuda:0
            "1": {"resources": {"GPU": 1}, "env": "1,0"},
        }
        with pytest.raises(ConfigError, match=r"an integer in 1\.\.2"):
            session.scale(3)
        session.scale(1)
        session.wait_for_workers(1)
        assert set(by_name(session)) == {"0"}
        session.scale(2)  # the freed GPU gets its worker back
        session.wait_for_workers(2)
        assert by_name(session)["1"] == {"resources": {"GPU": 1}, "env": "1,0"}
        # the kernel keeps its own environment
        assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ[
            "CUDA_VISIBLE_DEVICES"] != "1,0"
    finally:
        session.close()


def test_gpu_requests_the_machine_cannot_meet_start_nothing(two_gpu_machine):
    from scalekit.session import active_sessions

    before = list(active_sessions())
    with pytest.raises(ConfigError, match="at most 2"):
        sk.cluster(gpus=3)
    with pytest.raises(ConfigError, match="at most 2 with gpus='auto'"):
        sk.cluster(gpus="auto", workers=3)
    assert active_sessions() == before


def test_auto_without_gpus_starts_cpu_workers_and_says_so(monkeypatch):
    from scalekit.events import Notice

    monkeypatch.setattr(gpus, "visible_gpus", lambda: [])
    session = sk.cluster(gpus="auto", workers=1, memory_limit="1GiB")
    try:
        session.wait_for_workers(1)
        assert session.config.gpus is None
        notice = session.bus.latest(Notice)  # before the start's own notices, if any
        assert notice is not None and "starting 1 CPU worker" in notice.message
        assert [w["resources"] for w in by_name(session).values()] in ([{}], [None])
    finally:
        session.close()


def test_a_cuda_fit_on_workers_that_see_no_gpu_is_refused_before_it_starts(two_gpu_machine):
    """The workers are pinned to GPUs this machine does not really have: torch sees none
    there, and the fit says so (nothing started, the cluster as it was); a CPU net
    trains on the same workers."""
    from skorch import NeuralNetClassifier
    from training_models import DigitsMLP, digits

    X, _, y, _ = digits()
    session = sk.cluster(gpus="auto", memory_limit="1GiB")
    try:
        session.wait_for_workers(2)
        before = set(session.client.nthreads())
        net = NeuralNetClassifier(DigitsMLP, max_epochs=2, device="cuda", verbose=0)
        with pytest.raises(UsageError, match="has no GPU"):
            sk.fit(net, X, y, cluster=session, show=False)
        assert set(session.client.nthreads()) == before
        cpu_net = NeuralNetClassifier(DigitsMLP, max_epochs=2, verbose=0)
        run = sk.fit(cpu_net, X, y, cluster=session, show=False, checkpoint=False)
        assert run.status == "finished" and run.report.world_size == 2
        assert run.report.transport == ("shared memory",) * 2  # gloo's host path, no NCCL
    finally:
        session.close()
