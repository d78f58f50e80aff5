"""The one-file claim of the strategy protocol: a fifth strategy, written here and
registered with one line, is resolved by name and trained by the rank's own loop (a
one-process gloo group), checkpoints included, with nothing else changed."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

from scalekit.errors import UsageError
from scalekit.training import rank as rank_module
from scalekit.training import strategies as st
from scalekit.training.checkpoint import CheckpointStore
from scalekit.training.publisher import Publisher
from scalekit.training.rank import RankSpec
from scalekit.training.strategies import Prepared, RankSetup, Strategy, base


@dataclasses.dataclass(frozen=True)
class EpochAverage(Strategy):
    """Each rank steps alone on its piece of every global batch; the ranks average their
    parameters at each epoch end and record how far apart they were afterwards."""

    warm: bool = True  # average once when prepared (start from identical weights)
    name = "epoch_average"

    def prepare(self, net: Any, setup: RankSetup) -> Prepared:
        module = net.module_
        if self.warm:
            base.average_parameters(module)
        return Prepared(self, module, module, module, net=net)

    def loss_weight(self, piece: int, batch: int, world_size: int) -> float:
        return 1.0  # each rank's own mean loss

    def end_epoch(self, prepared: Prepared) -> None:
        base.sync_if_drifted(prepared)
        prepared.net.history.record("averaged_at", prepared.synced_at)
        prepared.net.history.record("spread", parameter_spread(prepared.model))


def parameter_spread(module: nn.Module) -> float:
    """The largest difference of any parameter between the ranks (a collective)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


@pytest.fixture
def registered():
    st.register(EpochAverage)  # the one registry line
    try:
        yield
    finally:
        st.unregister("epoch_average")


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# -- the registry ---------------------------------------------------------------------------


def test_a_registered_strategy_resolves_by_name_with_options(registered):
    assert "epoch_average" in st.names()
    assert st.resolve("epoch_average") == EpochAverage()
    assert st.resolve("epoch_average", warm=False) == EpochAverage(warm=False)
    assert st.resolve(EpochAverage(), warm=False) == EpochAverage(warm=False)
    with pytest.raises(UsageError, match=r"epoch_average takes the options \['warm'\]"):
        st.resolve("epoch_average", sync_every=2)


def test_an_unregistered_strategy_is_unknown_by_name_but_usable_as_an_object():
    with pytest.raises(UsageError, match="choose one of ddp, local_sgd, fsdp, hybrid$"):
        st.resolve("epoch_average")
    toy = EpochAverage()
    assert st.resolve(toy) is toy


def test_registering_checks_what_a_strategy_must_be(registered):
    @dataclasses.dataclass  # not frozen: it could change on its way to the ranks
    class Mutable(Strategy):
        name = "mutable"

    @dataclasses.dataclass(frozen=True)
    class Clash(Strategy):
        name = "epoch_average"

    with pytest.raises(TypeError, match="frozen dataclass"):
        st.register(Mutable)
    with pytest.raises(TypeError, match="subclasses Strategy"):
        st.register(dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'epoch_average' exists already"):
        st.register(Clash)
    st.register(EpochAverage)  # registering the same class again changes nothing


def test_the_defaults_are_those_of_an_averaging_strategy_with_plain_checkpoints():
    toy = EpochAverage()
    assert toy.sharded is False and toy.time_based_saves is True
    assert toy.writes_checkpoints(0) and not toy.writes_checkpoints(1)
    assert toy.state_shards(8) == 1
    assert toy.describe(2) == "epoch_average(warm=True) on 2 rank(s)"
    assert Strategy.loss_weight(toy, 16, 64, 2) == 0.5


# -- training with it through the rank's loop --------------------------------------------------


class Worker:
    """What a rank's publisher needs of a Dask worker: the messages it sends."""

    address = "tcp://127.0.0.1:1"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def log_event(self, topic: str, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def data(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def test_the_toy_strategy_trains_through_the_rank_loop(registered, one_rank_group, tmp_path):
    torch.manual_seed(0)
    net = NeuralNetClassifier(nn.Linear, module__in_features=6, module__out_features=2,
                              criterion=nn.CrossEntropyLoss, max_epochs=3, lr=0.5,
                              batch_size=8, train_split=None, verbose=0).initialize()
    store = CheckpointStore(str(tmp_path))
    spec = RankSpec(run_id="toy", generation=0, world_size=1, net=net, max_epochs=3,
                    topic="t", strategy=st.resolve("epoch_average"), checkpoint=store,
                    beacon_interval=60.0)
    worker = Worker()
    X, y = data()
    result = rank_module._train(spec, 0, worker.address, X, y, Publisher(worker, spec, 0))

    # the toy's hooks ran: averaged at each epoch end (6 steps an epoch), ranks agree
    assert net.history[:, "averaged_at"] == [6, 12, 18]
    assert net.history[:, "spread"] == [0.0, 0.0, 0.0]
    assert net.history[-1, "train_loss"] < net.history[0, "train_loss"]
    # what every strategy gets: the state for the notebook, checkpoints, messages
    assert result.stopped == "finished" and result.state["epoch"] == 3
    assert result.state["history"][-1]["averaged_at"] == 18
    saved = [m for m in worker.sent if m["kind"] == "checkpoint"]
    assert [m["epoch"] for m in saved] == [1, 2, 3]
    state, info = store.load_latest()
    assert info.epoch == 3 and set(state["module"]) == {"weight", "bias"}
    epochs = [m for m in worker.sent if m["kind"] == "epoch"]
    assert [m["row"]["spread"] for m in epochs] == [0.0, 0.0, 0.0]
    assert [m["state"] for m in worker.sent if m["kind"] == "rank"] == ["training", "done"]
