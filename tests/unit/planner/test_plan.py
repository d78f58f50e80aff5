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
        self.ran = []

    def nthreads(self):
        return {f"tcp://w{i}": self.session.threads for i in range(self.session.n)}

    def scheduler_info(self):
        gpu = {"GPU": 1} if self.session.gpus else {}
        return {"workers": {a: {"resources": dict(gpu)} for a in self.nthreads()}}

    def run(self, fn, *args, workers=None, **kwargs):
        # what ran, on which workers (all of them by default) and at which cluster size
        self.ran.append((fn.__name__, tuple(workers or self.nthreads()), self.session.n))
        return {}


class FakeSession:
    def __init__(self, n=1, threads=1, gpus=False):
        self.n, self.threads, self.gpus = n, threads, gpus
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
    import scalekit.fitting

    calls = []

    def fit(net, X, y=None, *, cluster=None, **kwargs):
        calls.append((net, cluster, kwargs))
        return FakeRun(cluster)

    monkeypatch.setattr(scalekit.fitting, "fit", fit)
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
    # the workers scaling added were warmed (at the new size) before the fit, and ran a
    # throw-away one-epoch fit of a copy of the net on two batches on both workers
    assert [(name, n) for name, _, n in session.client.ran] == [
        ("warm_worker", 2), ("_import_runtime", 2)]
    (warm_net, warm_cluster, warm_kwargs), (got_net, cluster, kwargs) = fake_fit
    assert warm_net is not net and warm_net.max_epochs == 1 and warm_cluster is session
    assert (warm_kwargs["max_workers"], warm_kwargs["strategy"]) == (2, DDP())
    assert got_net is net and cluster is session
    assert kwargs["strategy"] == DDP() and kwargs["max_workers"] == 2
    assert kwargs["checkpoint"] == "memory://x" and kwargs["wait"] is True
    assert isinstance(run, FakeRun)


def test_apply_adaptive_targets_the_plan_once_the_fit_is_attached(fake_fit):
    p = two_worker_plan()
    session = FakeSession(n=1, threads=1)
    run = p.apply(session, make_net(), X, Y, adaptive=True, show=False)
    assert session.calls == [("scale", 2), ("wait", 2), ("adapt", 1, 2)]
    assert fake_fit[-1][2]["wait"] is False  # started in the background, then joined
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
    # a new cluster: warmed, then a throw-away one-epoch fit, then the fit
    session = fake_fit[0][1]
    assert isinstance(session, FakeSession) and fake_fit[1][1] is session
    assert [name for name, _, _ in session.client.ran] == ["warm_worker", "_import_runtime"]
    assert fake_fit[0][0].max_epochs == 1 and fake_fit[1][0].max_epochs == 10


def test_a_failing_warm_up_fit_does_not_stop_the_fit(monkeypatch):
    import scalekit.fitting
    from scalekit.planner.probe import warm_up_fit

    def fit(*args, **kwargs):
        raise ValueError("n_splits=5 cannot be greater than the number of members")

    monkeypatch.setattr(scalekit.fitting, "fit", fit)
    warm_up_fit(FakeSession(), make_net(), X, Y)  # logged, not raised


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


def test_probe_net_is_an_untrained_quiet_copy_that_validates_like_the_net():
    def split(ds, y):
        return ds, ds

    net = make_net(callbacks=[("x", None)], train_split=split).initialize()
    copy = probe_net(net, epochs=2)
    assert copy is not net and not getattr(copy, "initialized_", False)
    assert (copy.max_epochs, copy.verbose, copy.callbacks) == (2, 0, None)
    assert copy.train_split is split  # the real fit validates too: like for like
    assert copy.module is MLP and copy.batch_size == 64
    assert copy.device == "cpu"
    assert probe_net(make_net(device="cuda"), epochs=2).device == "cpu"
    assert probe_net(net, epochs=2, gpus=1).device == "cuda"


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


# -- end to end, explained -------------------------------------------------------------


def timed_machine():
    """one_machine() with the probes' timings: 0.15 s per fit (+0.1 s per further ddp
    rank), 10 ms per epoch, data at 500 MiB/s."""
    from dataclasses import replace

    return [replace(m, fit_overhead_s=0.15 + 0.1 * (m.workers - 1), epoch_overhead_s=0.01,
                    send_bytes_per_s=500 * 2**20) for m in one_machine()]


def test_the_plan_predicts_the_fits_end_to_end_rate_and_explains_it():
    p = sk.plan(make_net(), X, Y, budget=Budget(cores=2), measurements=timed_machine())
    c = p.choice
    assert p.data_bytes == X.nbytes + Y.nbytes
    seconds = 10 * 1000 / 62_000 + 0.15 + 10 * 0.01 + p.data_bytes / (500 * 2**20)
    assert c.fit_seconds == pytest.approx(seconds, rel=1e-3)
    assert c.samples_per_s == pytest.approx(10 * 1000 / seconds, rel=1e-3)
    assert c.steady_samples_per_s == pytest.approx(62_000, rel=0.01)
    assert c.overhead_seconds == pytest.approx(seconds - 10 * 1000 / 62_000, rel=1e-3)
    row = p.table()[0]
    assert row["samples_per_s"] == c.samples_per_s
    assert row["steady_samples_per_s"] == c.steady_samples_per_s
    assert row["overhead_seconds"] == c.overhead_seconds
    text = repr(p)
    assert f"-> {c.samples_per_s:,.0f} samples/s end to end" in text
    assert "10 epochs of 1,000 samples in about 0.41 s (0.25 s of it overhead)" in text
    header = text.splitlines()[1].split()
    assert header[header.index("samples/s") + 1] == "steady"
    assert "fit time" in text and "overhead" in header
    assert ("overhead: 150 ms per fit (+ per further worker: 100 ms ddp, 100 ms fsdp), "
            "10 ms per epoch, data sent at 500 MiB/s per worker") in text
    assert "<th>steady</th>" in p._repr_html_() and "150 ms per fit" in p._repr_html_()


def test_a_short_fit_stays_on_fewer_workers_than_a_long_one():
    from scalekit.planner.model import Measurement

    # two workers train 1.9x as fast, but start-up costs them 3 s more per fit
    measured = [Measurement("ddp", 1, 1, 1000.0, fit_overhead_s=0.5),
                Measurement("ddp", 2, 1, 1900.0, fit_overhead_s=3.5)]
    budget = Budget(cores=2, threads=(1,))
    short = sk.plan(make_net(), X, Y, budget=budget, measurements=measured, epochs=1)
    assert short.workers == 1
    long = sk.plan(make_net(), np.concatenate([X] * 20), np.concatenate([Y] * 20),
                   budget=budget, measurements=measured, epochs=10)
    assert long.workers == 2


# -- GPUs -------------------------------------------------------------------------------


def gpu_measurements():
    from scalekit.planner.model import Measurement

    return [*one_machine(),
            Measurement("ddp", 1, 8, 400_000, gpus=1, fit_overhead_s=0.6, epoch_overhead_s=0.02),
            Measurement("ddp", 2, 8, 700_000, gpus=1, fit_overhead_s=0.7,
                        epoch_overhead_s=0.02)]


def test_gpu_workers_are_planned_at_the_threads_they_were_measured_with():
    p = sk.plan(make_net(), np.concatenate([X] * 100), np.concatenate([Y] * 100),
                budget=Budget(cores=16, gpus=2), measurements=gpu_measurements())
    assert (p.workers, p.threads_per_worker, p.gpus) == (2, 8, 2)
    gpu_rows = [c for c in p.candidates if c.gpus]
    assert {c.threads for c in gpu_rows} == {8}
    assert "x 1 GPU" in p.choice.label and "GPUs" in repr(p).splitlines()[1]


def test_apply_scales_a_gpu_session_and_trains_on_cuda(fake_fit):
    p = sk.plan(make_net(), np.concatenate([X] * 100), np.concatenate([Y] * 100),
                budget=Budget(cores=16, gpus=2), measurements=gpu_measurements())
    session = FakeSession(n=1, threads=8, gpus=True)
    net = make_net()
    p.apply(session, net, X, Y, show=False)
    assert session.calls == [("scale", 2), ("wait", 2)]
    ran = session.client.ran
    assert ("_warm_cuda", ("tcp://w0", "tcp://w1"), 2) in ran
    assert net.device == "cuda"
    (warm_net, _, _), (_, cluster, kwargs) = fake_fit
    assert warm_net.device == "cuda"  # warm-ups train where the fit will
    assert cluster is session and kwargs["max_workers"] == 2


def test_apply_refuses_a_gpu_plan_on_cpu_workers(fake_fit):
    p = sk.plan(make_net(), np.concatenate([X] * 100), np.concatenate([Y] * 100),
                budget=Budget(cores=16, gpus=2), measurements=gpu_measurements())
    with pytest.raises(UsageError, match=r"wants 2 GPU worker\(s\) but 3 of the cluster's 3 "
                       r"workers have no GPU; pass None .* sk.cluster\(gpus=2, "
                       r"threads_per_worker=8\)"):
        p.apply(FakeSession(n=3, threads=8), make_net(), X, Y)
    assert not fake_fit


def test_a_cpu_plan_moves_a_cuda_net_to_the_cpu(fake_fit):
    p = two_worker_plan()
    net = make_net(device="cuda")
    p.apply(FakeSession(n=2, threads=1), net, X, Y, show=False)
    assert net.device == "cpu"
    assert len(fake_fit) == 1  # the cluster did not grow: no warm-up fit


def test_a_gpu_plan_starts_gpu_workers(fake_fit, monkeypatch):
    import scalekit.session

    started = []

    def cluster(workers=None, threads_per_worker=None, **options):
        started.append((workers, threads_per_worker, options))
        return FakeSession(n=workers, threads=threads_per_worker, gpus="gpus" in options)

    monkeypatch.setattr(scalekit.session, "cluster", cluster)
    p = sk.plan(make_net(), np.concatenate([X] * 100), np.concatenate([Y] * 100),
                budget=Budget(cores=16, gpus=2), measurements=gpu_measurements())
    run_session = p.cluster()
    assert started == [(2, 8, {"gpus": 2})]
    assert ("_warm_cuda", ("tcp://w0", "tcp://w1"), 2) in run_session.client.ran


def test_planning_on_a_gpu_session_probes_its_gpu_workers(monkeypatch):
    import importlib

    asked = {}

    def probe(net, X, y=None, *, session=None, **options):
        asked.update(options)
        return gpu_measurements()

    # the package's `probe` names the function; the module is in sys.modules
    monkeypatch.setattr(importlib.import_module("scalekit.planner.probe"), "probe", probe)
    session = FakeSession(n=2, threads=8, gpus=True)
    p = sk.plan(make_net(), X, Y, session=session)
    assert p.budget.gpus == 2  # the session's GPU workers
    assert (asked["gpus"], asked["gpu_threads"]) == (2, 8)
    p = sk.plan(make_net(), X, Y, session=session, budget=Budget(cores=4, threads=(1, 2)))
    assert asked["threads"] == (1, 2) and asked["gpus"] == 0


def test_gpu_workers_are_those_with_the_gpu_resource():
    from scalekit.planner.probe import gpu_workers

    class Client:
        def scheduler_info(self):
            return {"workers": {"tcp://b": {"resources": {"GPU": 1}}, "tcp://a": {},
                                "tcp://c": {"resources": {"GPU": 1.0}},
                                "tcp://d": {"resources": {"GPU": 0}}}}

    assert gpu_workers(Client()) == ["tcp://b", "tcp://c"]


@pytest.mark.parametrize(("session", "need", "threads", "gpus", "uses_it"), [
    (FakeSession(n=2, threads=8, gpus=True), 2, 8, 1, True),
    (FakeSession(n=2, threads=8, gpus=True), 1, 8, 1, True),
    (FakeSession(n=1, threads=8, gpus=True), 2, 8, 1, False),    # too few GPU workers
    (FakeSession(n=2, threads=8, gpus=True), 2, 4, 1, False),    # other threads
    (FakeSession(n=2, threads=8, gpus=False), 1, 8, 1, False),   # no GPU
    (FakeSession(n=2, threads=8, gpus=True), 1, 8, 0, False),    # CPU probes: CPU workers
    (FakeSession(n=2, threads=1, gpus=False), 2, 1, 0, True),
])
def test_which_cluster_a_probe_runs_on(monkeypatch, session, need, threads, gpus, uses_it):
    import scalekit.session
    from scalekit.planner.probe import _cluster_for

    started = []

    def cluster(workers=None, threads_per_worker=None, **options):
        started.append((workers, threads_per_worker, options))
        temporary = FakeSession(n=workers, threads=threads_per_worker, gpus=bool(options))
        temporary.close = lambda: started.append("closed")
        return temporary

    monkeypatch.setattr(scalekit.session, "cluster", cluster)
    with _cluster_for(session, need, threads, gpus) as used:
        assert (used is session) == uses_it
    if not uses_it:
        assert started == [(need, threads, {"gpus": need} if gpus else {}), "closed"]


def test_gpu_probe_threads_default_to_a_share_of_the_cores():
    got = default_configs(cores=16, strategies=("ddp",), gpus=2)
    assert [c for c in got if c.gpus] == [ProbeConfig("ddp", 1, 8, gpus=1),
                                          ProbeConfig("ddp", 2, 8, gpus=1)]
    got = default_configs(cores=16, strategies=("ddp",), gpus=1, gpu_threads=4)
    assert [c for c in got if c.gpus] == [ProbeConfig("ddp", 1, 4, gpus=1)]
