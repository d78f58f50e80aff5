"""The sharded mode on one rank (a one-process gloo group): skorch's loop fed from the
deal, validation on held-out shards, the deal's position in a mid-epoch state and a
resumed epoch that continues it; the progress messages and their events."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

import scalekit as sk
from scalekit.data import ShardedInput
from scalekit.data.split import split_shards
from scalekit.events import EventBus, ShardProgress
from scalekit.training import state as training_state
from scalekit.training import strategies as st
from scalekit.training.dist_net import RankContext, make_distributed, undo_distributed
from scalekit.training.inbox import Inbox
from scalekit.training.messages import DataRead, decode
from scalekit.training.rounds import Beacons
from scalekit.training.shard_feed import fit_inputs

FEATURES = [f"f{j}" for j in range(4)]


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for i in range(4):
        X = rng.normal(size=(60, 4)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        table = pa.table({**{c: X[:, j] for j, c in enumerate(FEATURES)}, "label": y})
        pq.write_table(table, tmp_path / f"p{i}.parquet", row_group_size=30)
    return sk.data.parquet(str(tmp_path), features=FEATURES, target="label")


class Positions:
    """Captures the state's data position after given steps (as a mid-epoch save)."""

    def __init__(self, at):
        self.at, self.states = at, []

    def __call__(self, net, epoch, step):
        if (epoch, step) in self.at:
            self.states.append(training_state.capture_meta(
                net, epoch=epoch, step=step, world_size=1, seed=0, run_id="t"))


def run(net, data, *, state=None, on_step=None, epochs=2):
    net.initialize()
    ctx = RankContext(rank=0, world_size=1, seed=3, on_step=on_step)
    if state is not None:
        partial = training_state.restore(net, {**state, "format": 1})
        ctx.resume_epoch, ctx.resume_step, ctx.resume_batches = (
            state["epoch"], state["step"], partial)
    par = st.DDP().prepare(net, st.RankSetup(world_size=1))
    make_distributed(net, ctx, par)
    try:
        with fit_inputs(net, ctx, data, None, world_size=1, rank=0, seed=3,
                        state=state) as (X, y):
            net.partial_fit(X, y, epochs=epochs)
    finally:
        undo_distributed(net)
    return net


def make_net(**kwargs):
    torch.manual_seed(0)
    return NeuralNetClassifier(nn.Linear, module__in_features=4, module__out_features=2,
                               criterion=nn.CrossEntropyLoss, lr=0.1, batch_size=20,
                               iterator_train__shuffle=True, verbose=0, classes=[0, 1],
                               **kwargs)


def test_a_rank_trains_every_full_step_of_its_deal(one_rank_group, source):
    net = run(make_net(train_split=None), ShardedInput(train=source))
    assert [row["train_batch_count"] for row in net.history] == [12, 12]
    assert all(b["train_batch_size"] == 20 for b in net.history[-1]["batches"])


def test_validation_reads_the_held_out_shards(one_rank_group, source):
    from skorch.dataset import ValidSplit

    train, valid = split_shards(source, 0.25, seed=0)
    net = run(make_net(train_split=ValidSplit(4)), ShardedInput(train=train, valid=valid))
    row = net.history[-1]
    assert row["train_batch_count"] == 9 and row["valid_batch_count"] == 3
    assert sum(b.get("valid_batch_size", 0) for b in row["batches"]) == 60
    assert 0.5 < row["valid_acc"] <= 1.0


def test_a_mid_epoch_state_records_the_deal_and_a_resumed_epoch_continues_it(
        one_rank_group, source):
    data = ShardedInput(train=source)
    positions = Positions({(1, 5)})
    run(make_net(train_split=None), data, on_step=positions)
    (meta,) = positions.states
    saved = json.loads(json.dumps(meta["data"]))  # plain data, as a checkpoint keeps it
    assert saved["epoch"] == 1 and saved["plan"]["local"] == 20
    state = {**meta, "data": saved, "module": None, "optimizer": None, "criterion": None}

    seen = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def read(self, index):
            seen.append(index)
            return self.inner.read(index)

    spied = ShardedInput(train=Spy(source))
    net = run(make_net(train_split=None), spied, state=state, epochs=1)
    assert len(net.history) == 2
    batches = net.history[-1]["batches"]
    assert len(batches) == 12  # 5 kept from before, 7 trained now
    # only the row groups holding rows 100.. of the epoch's stream were read again
    assert 0 < len(seen) < len(source.shards)


def test_data_progress_travels_as_a_message_and_becomes_an_event():
    message = DataRead(generation=2, rank=1, worker="tcp://w:1", epoch=3, shards_done=2,
                       shards_total=5, rows_done=40, rows_total=100, bytes_read=4096,
                       buffered=2048, read_s=0.01)
    assert decode(json.loads(json.dumps(message.to_dict()))) == message
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    Inbox("r1", bus, Beacons()).handle(message)
    (event,) = [e for e in seen if isinstance(e, ShardProgress)]
    assert event.rank == 1 and event.shards_done == 2 and event.shards_total == 5
    assert event.fraction == 0.4 and event.key == "ShardProgress/1"
    assert json.loads(json.dumps(event.to_dict()))["buffered"] == 2048
