"""The strategies (scalekit.training.strategies): the protocol, the registry, resolving
names and options, and each strategy's hooks."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from scalekit.training import strategies as st
from scalekit.training.strategies import (
    DDP,
    FSDP,
    Hybrid,
    LocalSGD,
    Prepared,
    base,
    fsdp,
    hybrid_mesh_shape,
    resolve,
)

# -- resolve -----------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "options", "expected"), [
    ("ddp", {}, DDP()),
    ("fsdp", {}, FSDP(wrap="children")),
    ("fsdp", {"wrap": ("Linear",)}, FSDP(wrap=("Linear",))),
    ("hybrid", {}, Hybrid(shard_size=2)),
    ("hybrid", {"shard_size": 4}, Hybrid(shard_size=4)),
    ("hybrid", {"shard_size": 4, "wrap": ("Block",)}, Hybrid(wrap=("Block",), shard_size=4)),
    ("local_sgd", {}, LocalSGD(sync_every=8)),
    ("local_sgd", {"sync_every": 32}, LocalSGD(sync_every=32)),
    # objects pass through; options replace their fields
    (FSDP(wrap=("Linear",)), {}, FSDP(wrap=("Linear",))),
    (LocalSGD(sync_every=4), {"sync_every": 2}, LocalSGD(sync_every=2)),
    (Hybrid(shard_size=2), {"shard_size": 8}, Hybrid(shard_size=8)),
])
def test_resolve(given, options, expected):
    got = resolve(given, **options)
    assert got == expected
    assert type(got) is type(expected)


def test_resolve_returns_the_same_object_without_options():
    strategy = FSDP(wrap=("Linear",))
    assert resolve(strategy) is strategy


@pytest.mark.parametrize(("strategy", "name", "sharded"), [
    (DDP(), "ddp", False), (FSDP(), "fsdp", True), (Hybrid(), "hybrid", True),
    (LocalSGD(), "local_sgd", False),
])
def test_names_and_sharding(strategy, name, sharded):
    assert strategy.name == name
    assert strategy.sharded is sharded
    assert resolve(name) == type(strategy)()


def test_hybrid_stands_on_its_own_and_strategies_pickle():
    # resolve accepts any Strategy, not whatever happens to subclass FSDP
    assert not isinstance(Hybrid(), FSDP) and isinstance(Hybrid(), st.Strategy)
    assert resolve(Hybrid(shard_size=4)) == Hybrid(shard_size=4)
    for s in (DDP(), FSDP(wrap=("Linear",)), Hybrid(shard_size=4), LocalSGD(sync_every=3)):
        assert pickle.loads(pickle.dumps(s)) == s  # shipped to every rank


def test_the_registry_lists_the_built_in_strategies_in_order():
    assert st.names() == ("ddp", "local_sgd", "fsdp", "hybrid")


@pytest.mark.parametrize(("strategy", "world", "shards", "says"), [
    (DDP(), 4, 1, "ddp() on 4 rank(s)"),
    (LocalSGD(sync_every=3), 2, 1, "local_sgd(sync_every=3) on 2 rank(s)"),
    (FSDP(wrap=("Linear",)), 4, 4, "fsdp(wrap=('Linear',)) on 4 rank(s)"),
    (Hybrid(shard_size=2), 4, 2, "hybrid(wrap='children', shard_size=2) on a 2 x 2 mesh"),
    (Hybrid(shard_size=2), 3, 1, "on a 3 x 1 mesh"),
])
def test_each_strategy_describes_itself_and_its_shards(strategy, world, shards, says):
    assert says in strategy.describe(world)
    assert strategy.describe().startswith(f"{strategy.name}(")
    assert strategy.state_shards(world) == shards


@pytest.mark.parametrize(("given", "options", "says"), [
    ("zero", {}, "unknown strategy 'zero'; choose one of ddp, local_sgd, fsdp, hybrid"),
    ("DDP", {}, "unknown strategy 'DDP'"),
    (None, {}, "unknown strategy None"),
    ("ddp", {"sync_every": 8}, "ddp takes the options none"),
    ("fsdp", {"shard_size": 2}, "fsdp takes the options ['wrap']"),
    ("local_sgd", {"wrap": "children"}, "local_sgd takes the options ['sync_every']"),
    ("local_sgd", {"sync_every": 0}, "sync_every must be an integer >= 1, got 0"),
    ("local_sgd", {"sync_every": 2.5}, "sync_every must be an integer >= 1, got 2.5"),
    ("hybrid", {"shard_size": 0}, "shard_size must be an integer >= 1, got 0"),
    ("hybrid", {"shard_size": "2"}, "shard_size must be an integer >= 1, got '2'"),
])
def test_bad_strategies_and_options_are_value_errors(given, options, says):
    from scalekit.errors import ScalekitError

    with pytest.raises(ScalekitError) as info:  # also a ValueError
        resolve(given, **options)
    assert says in str(info.value)


@pytest.mark.parametrize(("build", "says"), [
    (lambda: LocalSGD(sync_every=-1), "sync_every must be an integer >= 1"),
    (lambda: Hybrid(shard_size=-2), "shard_size must be an integer >= 1"),
])
def test_objects_validate_themselves(build, says):
    with pytest.raises(ValueError, match=says):
        build()


# -- hybrid_mesh_shape ----------------------------------------------------------------------


@pytest.mark.parametrize(("world", "shard", "expected"), [
    (1, 2, (1, 1)),   # one rank: nothing to shard over
    (2, 2, (1, 2)),   # one replica of two shards: fsdp
    (2, 1, (2, 1)),   # two replicas, unsharded: ddp-like
    (4, 2, (2, 2)),   # the 2-D mesh: shard in pairs, replicate across them
    (8, 4, (2, 4)),
    (8, 2, (4, 2)),
    (3, 2, (3, 1)),   # 2 does not divide 3: the shard group shrinks until it does
    (6, 4, (2, 3)),
    (8, 3, (4, 2)),
    (5, 2, (5, 1)),
    (4, 8, (1, 4)),   # larger than the world: one shard group of everyone
    (7, 7, (1, 7)),
])
def test_hybrid_mesh_shape(world, shard, expected):
    got = hybrid_mesh_shape(world, shard)
    assert got == expected
    replicas, size = got
    assert replicas * size == world and 1 <= size <= max(1, min(shard, world))


# -- loss weighting ----------------------------------------------------------------------------


def prepared(strategy):
    module = nn.Linear(3, 2)
    return Prepared(strategy, module, module, module)


@pytest.mark.parametrize("strategy", [DDP(), FSDP(), Hybrid()])
@pytest.mark.parametrize(("batch", "world"), [(64, 2), (64, 3), (64, 1), (5, 4), (7, 3)])
def test_loss_weight_makes_the_averaged_gradient_the_global_mean(strategy, batch, world):
    """What the ranks compute -- each the weighted mean loss of its piece, gradients
    averaged over the world -- is the gradient of the whole batch's mean loss."""
    from scalekit.training.sharding import rank_piece

    torch.manual_seed(0)
    X, y = torch.randn(batch, 3), torch.randint(0, 2, (batch,))
    idx = torch.arange(batch).numpy()
    module = nn.Linear(3, 2)
    loss_fn = nn.CrossEntropyLoss()
    par = Prepared(strategy, module, module, module)

    loss_fn(module(X), y).backward()
    whole = module.weight.grad.clone()
    averaged = torch.zeros_like(whole)
    for rank in range(world):
        piece = rank_piece(idx, rank, world)
        module.zero_grad()
        weight = par.loss_weight(len(piece), batch, world)
        assert weight == pytest.approx(len(piece) * world / batch)
        (loss_fn(module(X[piece]), y[piece]) * weight).backward()
        averaged += module.weight.grad / world
    torch.testing.assert_close(averaged, whole)


def test_local_sgd_leaves_each_ranks_loss_unweighted():
    par = prepared(LocalSGD())
    assert par.loss_weight(22, 64, 3) == 1.0


def test_local_sgd_averages_every_sync_every_steps_and_before_validation(monkeypatch):
    calls = []
    monkeypatch.setattr(base, "average_parameters",
                        lambda module, reducer=None: calls.append(module))
    par = prepared(LocalSGD(sync_every=3))
    for _ in range(7):
        par.after_step()
    assert len(calls) == 2 and par.step == 7  # after steps 3 and 6
    par.before_eval()
    assert len(calls) == 3


@pytest.mark.parametrize("strategy", [DDP(), FSDP(), Hybrid()])
def test_exact_strategies_never_average_parameters(monkeypatch, strategy):
    monkeypatch.setattr(base, "average_parameters",
                        lambda module, reducer=None: pytest.fail("averaged"))
    par = prepared(strategy)
    for _ in range(20):
        par.after_step()
    par.before_eval()


# -- memory accounting and wrapping ---------------------------------------------------------


def test_local_state_bytes_counts_params_grads_and_optimizer_state():
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    n = sum(p.numel() for p in module.parameters())  # 58
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    par = Prepared(DDP(), module, module, module)
    assert par.local_state_bytes(optimizer) == 4 * n  # params only, before any step
    module(torch.randn(5, 4)).sum().backward()
    assert par.local_state_bytes(optimizer) == 2 * 4 * n  # + grads
    optimizer.step()
    assert par.local_state_bytes(optimizer) == 3 * 4 * n  # + momentum buffers
    adam = torch.optim.Adam(module.parameters())
    adam.step()  # exp_avg, exp_avg_sq and a (scalar) step per parameter
    assert par.local_state_bytes(adam) == 4 * 4 * n + 4 * len(list(module.parameters()))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Block()
        self.act = nn.ReLU()  # no parameters: never a unit of its own
        self.b = Block()
        self.head = nn.Linear(4, 2)


@pytest.mark.parametrize(("wrap", "expected"), [
    ("children", ["a", "b", "head"]),
    (("Block",), ["a", "b"]),
    ("Block", ["a", "b"]),
    (("Linear",), ["a.inner", "b.inner", "head"]),
    (("Block", "Linear"), ["a", "a.inner", "b", "b.inner", "head"]),
])
def test_shard_units(wrap, expected):
    net = Net()
    names = {id(m): n for n, m in net.named_modules()}
    assert [names[id(m)] for m in fsdp.shard_units(net, wrap)] == expected


def test_children_looks_through_containers():
    class Wrapped(nn.Module):  # the usual skorch module: one Sequential child
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
                                     nn.ModuleList([nn.Linear(8, 8)]), nn.Linear(8, 2))

    net = Wrapped()
    names = {id(m): n for n, m in net.named_modules()}
    units = [names[id(m)] for m in fsdp.shard_units(net, "children")]
    assert units == ["seq.0", "seq.2.0", "seq.3"]


def test_a_wrap_that_matches_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"FSDP wrap=\('Conv2d',\) matches no submodule of Net"):
        fsdp.shard_units(Net(), ("Conv2d",))


# -- bad options are refused when the strategy is made ------------------------------------


def test_unknown_options_on_a_strategy_object_are_value_errors():
    with pytest.raises(ValueError, match="takes the options"):
        resolve(DDP(), sync_every=8)


@pytest.mark.parametrize("wrap", [5, (), ("Linear", 3)])
def test_a_bad_wrap_is_refused_when_the_strategy_is_made(wrap):
    with pytest.raises(ValueError, match="wrap"):
        resolve("fsdp", wrap=wrap)


# -- prepare (ddp) on a one-process gloo group -------------------------------------------------


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def initialized_net():
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(nn.Linear, module__in_features=4, module__out_features=2,
                               criterion=nn.CrossEntropyLoss).initialize()


def test_ddp_on_one_rank_trains_the_module_itself(one_rank_group):
    net = initialized_net()
    par = st.prepare(DDP(), net, world_size=1, device_ids=None)
    assert par.train_module is net.module_ and par.model is net.module_


def test_ddp_keeps_gradients_in_its_buckets(one_rank_group):
    from torch.nn.parallel import DistributedDataParallel

    net = initialized_net()
    par = st.prepare(DDP(), net, world_size=2, device_ids=None)
    assert isinstance(par.train_module, DistributedDataParallel)
    assert par.train_module.module is net.module_ and par.model is net.module_
    assert par.train_module.gradient_as_bucket_view


def test_local_sgd_releases_its_shared_memory_when_the_first_average_fails(monkeypatch):
    closed = []

    class Reducer:
        def close(self):
            closed.append(True)

    def fails(module, reducer=None):
        raise ConnectionError("a peer went away")

    monkeypatch.setattr(base, "host_reducer", lambda *a, **k: Reducer())
    monkeypatch.setattr(base, "average_parameters", fails)
    with pytest.raises(ConnectionError):
        st.prepare(LocalSGD(), initialized_net(), world_size=2, device_ids=None,
                   host_reduce=True)
    assert closed == [True]
