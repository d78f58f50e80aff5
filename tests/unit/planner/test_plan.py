"""sk.plan from given measurements, the Plan's explanation and apply() (no cluster: the
session and sk.fit are stand-ins), and the probe's pure parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

import scalekit as sk
from scalekit.errors import UsageError
from scalekit.planner import Budget, Plan, PlanError, plan
from scalekit.planner.probe import ProbeConfig, default_configs, probe_net, take
from scalekit.training.strategies import DDP, FSDP, Hybrid

from .measured import big_model, one_machine

X = np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, X):
        return self.seq(X)


def make_net(**kwargs):
    return NeuralNetClassifier(MLP, criterion=nn.CrossEntropyLoss, max_epochs=10,
                               batch_size=64, **kwargs)


def test_sk_plan_is_lazy_and_plans_from_measurements():
    assert sk.plan is plan
    p = sk.plan(make_net(), X, Y, budget={"cores": 2}, measurements=one_machine())
    assert isinstance(p, Plan)
    assert (p.workers, p.threads_per_worker) == (1, 2)
    assert p.strategy == DDP()
    assert p.adaptive_bounds == (1, 1)
    assert p.epochs == 10 and p.n_samples == 1000
    assert p.choice.fit_seconds == pytest.approx(10 * 1000 / 62_000, rel=0.01)


def test_plan_strategy_objects():
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=8, memory_per_worker="3GiB"),
                measurements=big_model())
    assert p.choice.strategy == "fsdp" and p.strategy == FSDP()
    hybrid = [c for c in p.candidates if c.strategy == "hybrid"]
    assert hybrid[0].strategy_object() == Hybrid(shard_size=hybrid[0].shard_size)


def test_the_table_explains_every_candidate():
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=2), measurements=one_machine())
    rows = p.table()
    assert len(rows) == len(p.candidates)
    assert rows[0]["chosen"] and sum(r["chosen"] for r in rows) == 1
    assert (rows[0]["workers"], rows[0]["threads"], rows[0]["strategy"]) == (1, 2, "ddp")
    feasible = [r for r in rows if r["feasible"]]
    assert [r["samples_per_s"] for r in feasible[1:]] == sorted(
        (r["samples_per_s"] for r in feasible[1:]), reverse=True)
    infeasible = [r for r in rows if not r["feasible"]]
    assert infeasible and all(r["why_not"] == "4 cores > 2" for r in infeasible)
    text = repr(p)
    assert text.splitlines()[0].startswith("plan (highest throughput): 1 x 2 threads, ddp")
    assert "4 cores > 2" in text and "samples/s" in text
    assert "note: hybrid not measured" in text


def test_html_table():
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=8, memory_per_worker="3GiB",
                                                cost_per_worker_hour=0.4),
                measurements=big_model())
    html = p._repr_html_()
    assert html.count("<tr") == len(p.candidates) + 1
    for header in ("workers", "threads", "strategy", "samples/s", "memory/rank", "cost/h",
                   "fit time", "fit cost", "feasible", "why not / note"):
        assert f"<th>{header}</th>" in html
    assert "/rank &gt; 3.0 GiB" in html  # escaped
    assert "font-weight:bold" in html and "rms error" in html


def test_plan_errors():
    with pytest.raises(PlanError, match="memory_per_worker is 1.0 GiB"):
        sk.plan(make_net(), X, Y, budget=Budget(cores=8, memory_per_worker="1GiB"),
                measurements=big_model())
    with pytest.raises(UsageError, match="nothing is probed"):
        sk.plan(make_net(), X, Y, budget={"cores": 2}, measurements=one_machine(), steps=5)


def test_deadline_as_text():
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=2, cost_per_core_hour=1.0),
                objective="cost", deadline="1 minute", epochs=5, measurements=one_machine())
    assert p.deadline == 60.0 and p.choice.fit_seconds <= 60.0


# -- apply ---------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, session):
        self.session = session

    def nthreads(self):
        return {f"tcp://w{i}": self.session.threads for i in range(self.session.n)}


class FakeSession:
    def __init__(self, n=1, threads=1):
        self.n, self.threads = n, threads
        self.client = FakeClient(self)
        self.calls = []
        self._training = []

    def scale(self, n):
        self.calls.append(("scale", n))
        self.n = n

    def wait_for_workers(self, n, timeout=60.0):
        self.calls.append(("wait", n))

    def adapt(self, low, high):
        self.calls.append(("adapt", low, high))


class FakeRun:
    def __init__(self, session):
        self.controller = object()
        self.done = False
        self.waited = False
        session._training.append(self.controller)

    def wait(self, timeout=None):
        self.waited = True


@pytest.fixture
def fake_fit(monkeypatch):
    import scalekit.runs

    calls = []

    def fit(net, X, y=None, *, cluster=None, **kwargs):
        calls.append((net, cluster, kwargs))
        return FakeRun(cluster)

    monkeypatch.setattr(scalekit.runs, "fit", fit)
    return calls


def two_worker_plan():
    # measured so that two single-thread workers win
    from scalekit.planner.model import Measurement

    measured = [Measurement("ddp", 1, 1, 1000.0), Measurement("ddp", 2, 1, 1900.0),
                Measurement("fsdp", 2, 1, 1500.0)]
    return sk.plan(make_net(), X, Y, budget=Budget(cores=2, threads=(1,)),
                   measurements=measured)


def test_apply_scales_and_fits_with_the_plan(fake_fit):
    p = two_worker_plan()
    assert (p.workers, p.threads_per_worker) == (2, 1)
    session = FakeSession(n=1, threads=1)
    net = make_net()
    run = p.apply(session, net, X, Y, checkpoint="memory://x", show=False)
    assert session.calls == [("scale", 2), ("wait", 2)]
    (got_net, cluster, kwargs), = fake_fit
    assert got_net is net and cluster is session
    assert kwargs["strategy"] == DDP() and kwargs["max_workers"] == 2
    assert kwargs["checkpoint"] == "memory://x" and kwargs["wait"] is True
    assert isinstance(run, FakeRun)


def test_apply_adaptive_targets_the_plan_once_the_fit_is_attached(fake_fit):
    p = two_worker_plan()
    session = FakeSession(n=1, threads=1)
    run = p.apply(session, make_net(), X, Y, adaptive=True, show=False)
    assert session.calls == [("scale", 2), ("wait", 2), ("adapt", 1, 2)]
    assert fake_fit[0][2]["wait"] is False  # started in the background, then joined
    assert run.waited


def test_apply_refuses_workers_with_other_threads(fake_fit):
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=2), measurements=one_machine())
    with pytest.raises(UsageError, match=r"wants 2 thread\(s\) per worker but the "
                       r"cluster's workers have 1; pass None"):
        p.apply(FakeSession(n=2, threads=1), make_net(), X, Y)
    assert not fake_fit
    with pytest.raises(UsageError, match="plan.apply sets strategy= from the plan"):
        p.apply(FakeSession(n=1, threads=2), make_net(), X, Y, strategy="fsdp")


def test_apply_without_a_session_starts_one_of_the_plans_shape(fake_fit, monkeypatch):
    import scalekit.session

    started = []

    def cluster(workers=None, threads_per_worker=None, **options):
        started.append((workers, threads_per_worker))
        return FakeSession(n=workers, threads=threads_per_worker)

    monkeypatch.setattr(scalekit.session, "cluster", cluster)
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=2), measurements=one_machine())
    p.apply(None, make_net(), X, Y, show=False)
    assert started == [(1, 2)]
    assert isinstance(fake_fit[0][1], FakeSession)


# -- the probe's pure parts -------------------------------------------------------------


@pytest.mark.parametrize(("cores", "kwargs", "expected"), [
    (2, {}, [("ddp", 1, 1), ("ddp", 2, 1), ("fsdp", 2, 1), ("ddp", 1, 2)]),
    (1, {}, [("ddp", 1, 1), ("ddp", 2, 1), ("fsdp", 2, 1)]),
    (8, {"strategies": ("ddp", "fsdp", "hybrid")},
     [("ddp", 1, 1), ("ddp", 2, 1), ("fsdp", 2, 1), ("ddp", 4, 1), ("fsdp", 4, 1),
      ("hybrid", 4, 1), ("ddp", 1, 8)]),
    (4, {"workers": (1, 2), "threads": (1, 2), "strategies": ("ddp",)},
     [("ddp", 1, 1), ("ddp", 2, 1), ("ddp", 1, 2), ("ddp", 2, 2)]),
    (2, {"strategies": ("fsdp",)}, [("ddp", 1, 1), ("fsdp", 2, 1), ("ddp", 1, 2)]),
])
def test_default_probe_configs(cores, kwargs, expected):
    got = default_configs(cores=cores, **kwargs)
    assert [(c.strategy, c.workers, c.threads) for c in got] == expected
    assert all(c.shard_size == (2 if c.strategy == "hybrid" else None) for c in got)


def test_gpu_probe_configs():
    got = default_configs(cores=2, strategies=("ddp",), gpus=2)
    assert [c for c in got if c.gpus] == [ProbeConfig("ddp", 1, 1, gpus=1),
                                          ProbeConfig("ddp", 2, 1, gpus=1)]


def test_probe_net_is_an_untrained_quiet_copy():
    net = make_net(callbacks=[("x", None)], train_split=lambda ds, y: (ds, ds)).initialize()
    copy = probe_net(net, epochs=2)
    assert copy is not net and not getattr(copy, "initialized_", False)
    assert (copy.max_epochs, copy.train_split, copy.verbose, copy.callbacks) == (2, None, 0,
                                                                                  None)
    assert copy.module is MLP and copy.batch_size == 64


@pytest.mark.parametrize("data", [
    np.arange(10), torch.arange(10), {"a": np.arange(10), "b": torch.arange(10)},
    list(range(10)),
])
def test_take_rows(data):
    idx = np.array([1, 3, 7])
    got = take(data, idx)
    values = got["a"] if isinstance(got, dict) else got
    assert [int(v) for v in values] == [1, 3, 7]


def test_take_from_a_dataset():
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.arange(10), torch.arange(10) * 2)
    sub = take(ds, np.array([2, 5]))
    assert len(sub) == 2 and int(sub[1][1]) == 10
