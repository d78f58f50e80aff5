"""capture/restore of the training state that moves between rounds and into checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

from scalekit.training import state as training_state

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)


class MLP(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 2),
                                 nn.Softmax(dim=-1))

    def forward(self, X):
        return self.seq(X)


def make_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    params = {"max_epochs": 3, "lr": 0.1, "optimizer__momentum": 0.9, "batch_size": 16,
              "verbose": 0, "train_split": None, **kwargs}
    return NeuralNetClassifier(MLP, **params)


def capture(net, **kwargs):
    args = {"epoch": len(net.history), "step": 0, "world_size": 2, "seed": 7,
            "run_id": "run1", **kwargs}
    return training_state.capture(net, net.module_, **args)


def through_checkpoint(state):
    """What a checkpoint does to the state: torch.save, then a weights-only load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture
def trained():
    return make_net().fit(X, Y)


def test_capture_is_plain_data(trained):
    state = capture(trained)
    assert state["format"] == training_state.FORMAT
    assert (state["epoch"], state["step"], state["world_size"], state["seed"],
            state["run_id"]) == (3, 0, 2, 7, "run1")
    assert set(state["module"]) == set(trained.module_.state_dict())
    assert "state" in state["optimizer"] and "param_groups" in state["optimizer"]
    assert len(state["history"]) == 3
    row = state["history"][-1]
    assert row["epoch"] == 3 and isinstance(row["train_loss"], float)
    assert isinstance(row["batches"], list) and "train_loss" in row["batches"][0]
    # loadable without pickle (what a checkpoint requires)
    loaded = through_checkpoint(state)
    assert loaded["history"] == state["history"]


@pytest.mark.parametrize("via_checkpoint", [False, True], ids=["in-memory", "checkpoint"])
def test_round_trip_restores_weights_optimizer_and_history(trained, via_checkpoint):
    state = capture(trained)
    if via_checkpoint:
        state = through_checkpoint(state)
    fresh = make_net(seed=123).initialize()  # other initial weights, empty history
    assert not torch.equal(fresh.module_.seq[0].weight, trained.module_.seq[0].weight)

    partial = training_state.restore(fresh, state)
    assert partial is None  # an epoch boundary
    for name, value in trained.module_.state_dict().items():
        torch.testing.assert_close(fresh.module_.state_dict()[name], value)
    saved_opt, restored_opt = trained.optimizer_.state_dict(), fresh.optimizer_.state_dict()
    assert restored_opt["param_groups"] == saved_opt["param_groups"]
    for key, entry in saved_opt["state"].items():
        torch.testing.assert_close(restored_opt["state"][key]["momentum_buffer"],
                                   entry["momentum_buffer"])
    assert len(fresh.history) == 3
    assert fresh.history[:, "epoch"] == [1, 2, 3]
    assert fresh.history[:, "train_loss"] == pytest.approx(trained.history[:, "train_loss"])
    np.testing.assert_array_equal(fresh.predict(X), trained.predict(X))


def test_a_restored_net_trains_on_exactly_like_the_original(trained):
    """Same weights and momentum: one more epoch without shuffling gives the same weights."""
    state = through_checkpoint(capture(trained))
    fresh = make_net(seed=5).initialize()
    training_state.restore(fresh, state)
    trained.partial_fit(X, Y, epochs=1)
    fresh.partial_fit(X, Y, epochs=1)
    assert len(fresh.history) == len(trained.history) == 4
    for name, value in trained.module_.state_dict().items():
        torch.testing.assert_close(fresh.module_.state_dict()[name], value)


def test_partial_epoch_batches_are_returned_and_the_history_keeps_whole_epochs(trained):
    # mid-epoch 3: two epochs done, 2 of 4 steps into the third
    state = capture(trained, epoch=2, step=2)
    state["history"][2]["batches"] = state["history"][2]["batches"][:2]
    fresh = make_net(seed=1).initialize()

    partial = training_state.restore(fresh, through_checkpoint(state))
    assert len(fresh.history) == 2
    assert fresh.history[:, "epoch"] == [1, 2]
    assert partial == state["history"][2]["batches"]
    assert len(partial) == 2 and all("train_loss" in b for b in partial)
    # the returned records are copies the caller may extend
    partial.append({"train_loss": 0.0})
    assert len(state["history"][2]["batches"]) == 2


def test_a_step_without_its_unfinished_row_returns_no_batches(trained):
    state = capture(trained, epoch=3, step=5)  # no 4th row recorded
    fresh = make_net(seed=1).initialize()
    assert training_state.restore(fresh, state) is None
    assert len(fresh.history) == 3


def test_restoring_an_earlier_epoch_drops_later_rows(trained):
    state = capture(trained, epoch=1)
    fresh = make_net(seed=1).initialize()
    assert training_state.restore(fresh, state) is None
    assert fresh.history[:, "epoch"] == [1]


@pytest.mark.parametrize("fmt", [None, 0, 2, "1"])
def test_an_unknown_format_is_rejected(trained, fmt):
    state = capture(trained)
    if fmt is None:
        del state["format"]
    else:
        state["format"] = fmt
    fresh = make_net(seed=1).initialize()
    before = {k: v.clone() for k, v in fresh.module_.state_dict().items()}
    with pytest.raises(ValueError, match="unknown training-state format"):
        training_state.restore(fresh, state)
    for name, value in fresh.module_.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[name])


def test_a_state_without_optimizer_keeps_the_fresh_optimizer(trained):
    state = capture(trained)
    state["optimizer"] = None
    fresh = make_net(seed=1).initialize()
    training_state.restore(fresh, state)
    assert fresh.optimizer_.state_dict()["state"] == {}


def test_a_criterion_with_state_is_captured_and_restored():
    weight = torch.tensor([0.25, 0.75])
    net = make_net(criterion=nn.CrossEntropyLoss, criterion__weight=weight,
                   module__hidden=4).initialize()
    state = capture(net)
    assert state["criterion"] is not None  # CrossEntropyLoss keeps `weight` as a buffer
    torch.testing.assert_close(state["criterion"]["weight"], weight)
    other = make_net(criterion=nn.CrossEntropyLoss, criterion__weight=torch.ones(2),
                     module__hidden=4).initialize()
    training_state.restore(other, through_checkpoint(state))
    torch.testing.assert_close(other.criterion_.weight, weight)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.int64(3), 3),
        (np.bool_(True), True),
        ((1, np.float64(2.0)), [1, 2.0]),
        ({1: np.int32(4), "a": [np.float32(0.5)]}, {"1": 4, "a": [0.5]}),
        (torch.tensor(2.5), 2.5),
        ("text", "text"),
        (None, None),
    ],
)
def test_plain(value, expected):
    result = training_state.plain(value)
    assert result == expected
    assert type(result) is type(expected)


def test_cpu_state_detaches_and_clones():
    tensor = torch.ones(2, requires_grad=True)
    out = training_state.cpu_state({"t": tensor, "n": 3})
    assert out["n"] == 3
    assert not out["t"].requires_grad
    out["t"].add_(1)
    assert torch.equal(tensor.detach(), torch.ones(2))
