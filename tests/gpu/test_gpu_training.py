"""Training on real GPUs (``make test-gpu``; skipped without CUDA).

What issue 12 promises on a GPU machine, with default settings: a cuda ``sk.fit`` on
GPU workers with ddp, fsdp and local SGD; bf16 within a point of float32; fp16 with
loss scaling; a CPU net on a GPU machine; ranks that would share a GPU refused before
the fit (never a hang or a raw NCCL error); checkpoints from a GPU fit resumed on the
CPU; the training set kept on the GPU or copied a batch ahead, with the same result.
"""

from __future__ import annotations

import pytest
import torch
from gpu_models import make_net, teacher_data

import scalekit as sk
from scalekit.errors import UsageError

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

X, Y, X_TEST, Y_TEST = teacher_data()


@pytest.fixture(scope="module")
def reference_accuracy() -> float:
    """Plain skorch on the same GPU: what a distributed fit must match."""
    net = make_net().fit(X, Y)
    return float(net.score(X_TEST, Y_TEST))


@pytest.fixture(scope="module")
def gpu_session():
    session = sk.cluster(gpus="auto")
    try:
        session.wait_for_workers(session.config.workers)
        yield session
    finally:
        session.close()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "local_sgd"])
def test_a_cuda_fit_on_gpu_workers_matches_plain_skorch(gpu_session, reference_accuracy,
                                                       strategy):
    net = make_net()
    run = sk.fit(net, X, Y, cluster=gpu_session, show=False, strategy=strategy,
                 checkpoint=False)
    assert run.status == "finished"
    report = run.report
    assert report.world_size == torch.cuda.device_count()
    assert len(report.peak_gpu_memory) == report.world_size
    assert all(m > 0 for m in report.peak_gpu_memory)
    if report.world_size > 1 and strategy != "local_sgd":
        assert set(report.transport) == {"nccl"}
    accuracy = net.score(X_TEST, Y_TEST)
    tolerance = 0.03 if strategy == "local_sgd" else 0.02
    assert abs(accuracy - reference_accuracy) <= tolerance, (accuracy, reference_accuracy)
    assert next(net.module_.parameters()).device.type == "cuda"  # where device= says


def test_bf16_is_within_a_point_of_float32_and_fp16_trains(gpu_session, reference_accuracy):
    bf16 = make_net()
    sk.fit(bf16, X, Y, cluster=gpu_session, show=False, precision="bf16", checkpoint=False)
    assert abs(bf16.score(X_TEST, Y_TEST) - reference_accuracy) <= 0.01
    assert all(p.dtype == torch.float32 for p in bf16.module_.parameters())
    fp16 = make_net()
    sk.fit(fp16, X, Y, cluster=gpu_session, show=False, precision="fp16", checkpoint=False)
    assert abs(fp16.score(X_TEST, Y_TEST) - reference_accuracy) <= 0.02


def test_bf16_with_fsdp_uses_fsdps_mixed_precision(gpu_session, reference_accuracy):
    net = make_net()
    sk.fit(net, X, Y, cluster=gpu_session, show=False, precision="bf16", strategy="fsdp",
           checkpoint=False)
    assert abs(net.score(X_TEST, Y_TEST) - reference_accuracy) <= 0.02


def test_data_on_the_gpu_or_a_batch_ahead_train_alike(gpu_session):
    resident = make_net(max_epochs=2)
    sk.fit(resident, X, Y, cluster=gpu_session, show=False, data_on_device=True,
           checkpoint=False, seed=3)
    copied = make_net(max_epochs=2)
    sk.fit(copied, X, Y, cluster=gpu_session, show=False, data_on_device=False,
           checkpoint=False, seed=3)
    assert resident.history[:, "train_loss"] == pytest.approx(
        copied.history[:, "train_loss"], rel=1e-3)


def test_a_cpu_net_trains_on_a_gpu_machine(gpu_session):
    net = make_net(device="cpu", max_epochs=2)
    run = sk.fit(net, X[:8000], Y[:8000], cluster=gpu_session, show=False, checkpoint=False)
    assert run.status == "finished"
    assert "nccl" not in run.report.transport
    assert next(net.module_.parameters()).device.type == "cpu"


def test_a_gpu_checkpoint_resumes_on_the_cpu(gpu_session, tmp_path):
    url = str(tmp_path / "ckpt")
    net = make_net(max_epochs=2)
    sk.fit(net, X, Y, cluster=gpu_session, show=False, checkpoint=url, precision="bf16")
    cpu = make_net(device="cpu", max_epochs=3)
    sk.fit(cpu, X, Y, cluster=gpu_session, show=False, checkpoint=url, resume=True)
    assert len(cpu.history) == 3
    assert cpu.score(X_TEST, Y_TEST) >= net.score(X_TEST, Y_TEST) - 0.02


def test_ranks_that_would_share_a_gpu_are_refused_before_the_fit():
    """More unpinned workers than GPUs: the extra one would share a GPU; the fit says
    which and how to fix it, at once (no NCCL 'Duplicate GPU', no hang)."""
    import time

    n = torch.cuda.device_count()
    session = sk.cluster(workers=n + 1, threads_per_worker=1)
    try:
        session.wait_for_workers(n + 1)
        started = time.monotonic()
        with pytest.raises(UsageError) as info:
            sk.fit(make_net(max_epochs=1), X, Y, cluster=session, show=False)
        assert "would share" in str(info.value) and "gpus='auto'" in str(info.value)
        assert f"max_workers={n}" in str(info.value)
        assert time.monotonic() - started < 60
        assert len(session.client.nthreads()) == n + 1  # the cluster as it was
        # ... and the documented way out trains
        run = sk.fit(make_net(max_epochs=1), X, Y, cluster=session, show=False,
                     max_workers=n, checkpoint=False)
        assert run.status == "finished"
    finally:
        session.close()
