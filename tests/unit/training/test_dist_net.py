"""The data-parallel skorch loop on one rank (a one-process gloo group): mixed
precision, fp16's gradient scaler, batches through the feeder, losses read once an
epoch (scalekit.training.dist_net, scalekit.training.data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn

from scalekit.training import strategies as st
from scalekit.training.data import BatchReader, Prefetcher, to_device
from scalekit.training.dist_net import (
    RankContext,
    _loss_sums,
    make_distributed,
    undo_distributed,
)


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.seen: list[torch.dtype] = []

    def forward(self, X):
        out = self.seq(X)
        self.seen.append(out.dtype)
        return out


class GradNorms(Callback):
    def initialize(self):
        self.norms = []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.norms.append(float(sum(p.grad.norm() ** 2 for _, p in named_parameters)))


def data(n=96):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)


class Big(nn.CrossEntropyLoss):
    def forward(self, y_pred, y_true):
        return 8 * super().forward(y_pred, y_true)


def fit_one_rank(criterion=nn.CrossEntropyLoss, **ctx_options):
    torch.manual_seed(0)
    norms = GradNorms()
    net = NeuralNetClassifier(MLP, criterion=criterion, max_epochs=2, lr=0.1,
                              batch_size=32, train_split=None, verbose=0,
                              callbacks=[("norms", norms)]).initialize()
    ctx = RankContext(rank=0, world_size=1, **ctx_options)
    make_distributed(net, ctx, st.prepare(st.DDP(), net, world_size=1, device_ids=None))
    X, y = data()
    net.partial_fit(X, y, epochs=2)
    undo_distributed(net)
    return net, norms.norms


def test_bf16_runs_the_forward_pass_in_bf16_and_keeps_float32_weights(one_rank_group):
    net, _ = fit_one_rank(autocast=torch.bfloat16)
    assert set(net.module_.seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net.module_.parameters())
    losses = [b["train_loss"] for b in net.history[-1]["batches"]]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
    assert net.history[-1]["train_loss"] < net.history[0]["train_loss"] + 0.5


def test_full_precision_stays_in_float32(one_rank_group):
    net, _ = fit_one_rank()
    assert set(net.module_.seen) == {torch.float32}


def test_a_gradient_scaler_changes_nothing_but_the_scale_of_the_backward(one_rank_group):
    # powers of two scale exactly: the same steps, the same recorded losses, and
    # callbacks see the true (unscaled) gradients
    plain_net, plain_norms = fit_one_rank()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaled_net, scaled_norms = fit_one_rank(scaler=scaler)
    assert scaler.get_scale() >= 2.0 ** 10  # it was used (and never hit an overflow)
    assert [r["train_loss"] for r in scaled_net.history] == [
        r["train_loss"] for r in plain_net.history]
    np.testing.assert_allclose(scaled_norms, plain_norms, rtol=1e-6)
    for a, b in zip(scaled_net.module_.parameters(), plain_net.module_.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_an_overflow_skips_the_step_instead_of_ruining_the_weights(one_rank_group):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # 8 x loss x scale: inf
    net, _ = fit_one_rank(criterion=Big, scaler=scaler)
    assert all(torch.isfinite(p).all() for p in net.module_.parameters())
    assert scaler.get_scale() < 2.0 ** 127  # backed off


# -- batches onto a device -----------------------------------------------------------------


def test_to_device_converts_numbers_and_leaves_the_rest():
    batch = {"a": np.arange(3, dtype=np.float32), "b": np.array(["x", "y"]),
             "c": (torch.ones(2), np.zeros(2, dtype=np.int64))}
    moved = to_device(batch, "cpu")
    assert isinstance(moved["a"], torch.Tensor) and moved["a"].dtype == torch.float32
    assert isinstance(moved["b"], np.ndarray)  # strings stay
    assert isinstance(moved["c"], tuple) and moved["c"][0] is batch["c"][0]
    assert moved["c"][1].dtype == torch.int64


def test_the_feeder_on_the_cpu_reads_each_batch_when_it_is_needed():
    reads = []

    def read(idx):
        reads.append(list(idx))
        return idx * 2

    feed = Prefetcher(read, "cpu")
    pieces = iter([("a", np.array([0, 1])), ("b", np.array([2]))])
    item, batch = next(feed(pieces))
    assert item[0] == "a"
    np.testing.assert_array_equal(batch, [0, 2])
    assert reads == [[0, 1]]  # nothing read ahead on the CPU


def test_a_reader_can_serve_batches_from_a_copy_on_the_device():
    from skorch.dataset import Dataset

    X, y = data(10)
    reader = BatchReader(Dataset(X, y))
    cache: dict = {}
    assert reader.keep_on("cpu", cache, share=None)
    Xb, yb = reader.read(np.array([3, 1]))
    assert isinstance(Xb, torch.Tensor)
    np.testing.assert_array_equal(Xb.numpy(), X[[3, 1]])
    np.testing.assert_array_equal(yb.numpy(), y[[3, 1]])
    again = BatchReader(Dataset(X, y))
    assert not again.keep_on("cpu", {}, share=0.25)  # "auto" needs a GPU's free memory
    assert isinstance(again.read(np.array([0]))[0], np.ndarray)


def test_loss_sums_from_floats_and_from_tensors():
    assert _loss_sums([1.5, 2.0], "cpu").dtype == torch.float64
    assert _loss_sums([torch.tensor(1.5), torch.tensor(2.0)], None).tolist() == [1.5, 2.0]
    assert _loss_sums([], "cpu").numel() == 0
