"""The planner end to end on real LocalClusters: probe, model, solve, apply, and its
prediction checked against real fits.

On this machine's cores: the probes run on the session (1 thread per worker: 1 and 2
workers, ddp and fsdp) and on a temporary one-worker cluster with all the cores as
threads; the plan is then applied (the cluster scaled, or one of the plan's shape
started) and the fit trains. Run with ``-s`` to see the measurements, the table and the
predicted-vs-real ratios::

    pytest tests/integration/test_planner.py -s -m slow
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import numpy as np
import psutil
import pytest
import torch
from skorch import NeuralNetClassifier
from strategy_models import DigitsNet
from torch import nn
from training_models import digits

import scalekit as sk
from scalekit.planner import Budget, Plan
from scalekit.session import active_sessions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()
WORKER_TIMEOUT = 300


def make_net():
    torch.manual_seed(0)
    return NeuralNetClassifier(
        DigitsNet, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.1,
        optimizer__momentum=0.9, batch_size=64, max_epochs=8, iterator_train__shuffle=True,
        verbose=0)


@pytest.fixture
def session(tmp_path):
    import dask.config

    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "checkpoints")}):
        s = sk.cluster(workers=2, threads_per_worker=1)
        try:
            s.wait_for_workers(2, timeout=WORKER_TIMEOUT)
            yield s
        finally:
            s.close()


def test_plan_measures_chooses_and_applies(session):
    cores = os.cpu_count()
    net = make_net()
    seen = []
    plan = sk.plan(net, X_TRAIN, Y_TRAIN, session=session, steps=10, on_result=seen.append,
                   timeout=600)
    print(f"\n[planner] measured: {list(plan.measurements)}\n{plan!r}", flush=True)

    # what was probed, and what it measured
    assert isinstance(plan, Plan)
    probed = sorted((m.strategy, m.workers, m.threads) for m in plan.measurements)
    expected = [("ddp", 1, 1), ("ddp", 2, 1), ("fsdp", 2, 1)]
    if cores > 1:
        expected.append(("ddp", 1, cores))
    assert probed == sorted(expected)
    assert seen == list(plan.measurements)
    n_params = sum(p.numel() for p in DigitsNet().parameters())
    for m in plan.measurements:
        assert m.samples_per_s > 0 and m.peak_rss > 100 * 2**20
        full = 3 * 4 * n_params  # params, grads, momentum
        assert m.state_bytes == pytest.approx(full / (2 if m.strategy == "fsdp" else 1),
                                              rel=0.02)
    assert plan.model.memory.full_state == pytest.approx(3 * 4 * n_params, rel=0.02)
    assert not getattr(net, "initialized_", False)  # the probes trained copies
    assert active_sessions() == [session]  # the temporary cluster is closed

    # the choice: within this machine, explained candidate by candidate
    assert plan.budget == Budget.this_machine()
    assert plan.choice.feasible and plan.choice.cores <= cores
    assert plan.choice.samples_per_s == pytest.approx(
        max(c.samples_per_s for c in plan.candidates if c.feasible))
    rows = plan.table()
    assert rows[0]["chosen"] and len(rows) == len(plan.candidates)
    assert all(r["why_not"] for r in rows if not r["feasible"])
    assert "<table>" in plan._repr_html_()

    # one call: the right cluster and the fit
    target = session if plan.threads_per_worker == 1 else None
    run = plan.apply(target, net, X_TRAIN, Y_TRAIN, show=False)
    try:
        assert run.status == "finished"
        assert run.report.world_size == plan.workers
        assert run.report.strategy == plan.choice.strategy
        assert set(run.session.client.nthreads().values()) == {plan.threads_per_worker}
        assert len(net.history) == 8
        assert net.score(X_TEST, Y_TEST) > 0.9
    finally:
        if run.session is not session:
            run.session.close()


# -- the prediction against real fits --------------------------------------------------
#
# What is compared: the plan's samples/s for its choice, and N x EPOCHS over the wall time
# of sk.fit running that choice (the user's end-to-end rate), measured in the same test,
# on the same session, with the same net, data and validation split.
#
# The machine is shared (two cores, other test runs): a timing comparison means
# something only when the rest of the machine left the probes and the fits alike. So
# the test works in *rounds*: plan (probing afresh), then three fits of the plan's
# choice (their median), while it measures how many cores the other processes used in
# each phase. A round counts when both phases ran on a quiet machine; the assertion is
# on the median of the counted rounds. Budget: single-thread workers (two threads per
# rank on two shared cores stall on every OpenMP barrier another process interrupts)
# and ddp (fsdp's probes are slow and never chosen here); the session is not resized
# between rounds, so no worker starts or stops while a fit is timed (a one-worker fit
# runs on the first worker with the second idle, as after plan.apply's scale-down).
#
# The fit is short (10 epochs of 10,000 samples, about a second) on purpose: the
# per-fit and per-epoch overhead are a fifth of it, so the steady rate alone would miss
# by more than 10 %; the test checks that too.

N, EPOCHS = 10_000, 10
QUIET = 0.3  # cores the other processes may use while a round is measured
ROUNDS, FITS, MAX_SECONDS = 3, 3, 240.0


def accuracy_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 64)).astype(np.float32)
    return X, X[:, :10].argmax(1).astype(np.int64)


def accuracy_net():
    torch.manual_seed(0)
    return NeuralNetClassifier(
        DigitsNet, module__hidden=256, criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD, lr=0.05, optimizer__momentum=0.9, batch_size=128,
        max_epochs=EPOCHS, verbose=0)


class OtherLoad:
    """Cores used by processes other than this one and its children (the workers)
    while the ``with`` block ran."""

    def __enter__(self):
        self.started, self.busy, self.ours = time.monotonic(), _busy(), _ours()
        return self

    def __exit__(self, *exc):
        elapsed = time.monotonic() - self.started
        self.cores = max(0.0, (_busy() - self.busy) - (_ours() - self.ours)) / elapsed


def _busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) \
        + getattr(t, "steal", 0)


def _ours() -> float:
    me = psutil.Process()
    total = 0.0
    for proc in (me, *me.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


@dataclasses.dataclass
class Round:
    predicted: float  # the plan's samples/s for its choice
    steady: float  # the choice's steady rate inside an epoch (no overhead)
    measured: float  # N x EPOCHS / median wall time of sk.fit
    choice: str
    others: tuple[float, float]  # cores the other processes used: probing, fitting

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted

    @property
    def quiet(self) -> bool:
        return max(self.others) <= QUIET


def measure_round(session, X, y) -> Round:
    budget = Budget(cores=os.cpu_count(), threads=(1,))
    with OtherLoad() as probing:
        plan = sk.plan(accuracy_net(), X, y, session=session, budget=budget,
                       strategies=("ddp",), steps=60, probe_epochs=6)
    walls = []
    with OtherLoad() as fitting:
        for _ in range(FITS):
            net = accuracy_net()
            started = time.perf_counter()
            run = sk.fit(net, X, y, cluster=session, strategy=plan.strategy,
                         max_workers=plan.workers, show=False)
            walls.append(time.perf_counter() - started)
            assert run.report.world_size == plan.workers
    c = plan.choice
    return Round(predicted=c.samples_per_s, steady=c.steady_samples_per_s,
                 measured=N * EPOCHS / statistics.median(walls), choice=c.label,
                 others=(probing.cores, fitting.cores))


def test_predicted_samples_per_s_is_within_10_percent_of_real_fits(session):
    X, y = accuracy_data()
    rounds: list[Round] = []
    started = time.monotonic()
    while sum(r.quiet for r in rounds) < ROUNDS and time.monotonic() - started < MAX_SECONDS:
        rounds.append(measure_round(session, X, y))
        r = rounds[-1]
        print(f"\n[planner accuracy] {r.choice}: predicted {r.predicted:,.0f}, real "
              f"{r.measured:,.0f} samples/s, ratio {r.ratio:.3f} (steady rate alone "
              f"{r.measured / r.steady:.3f}); other processes used {r.others[0]:.2f} / "
              f"{r.others[1]:.2f} cores -> {'counted' if r.quiet else 'not counted'}",
              flush=True)
    counted = [r for r in rounds if r.quiet]
    if len(counted) < 2:
        pytest.skip(f"the machine was busy in all but {len(counted)} of {len(rounds)} "
                    f"rounds (other processes' cores: {[r.others for r in rounds]}); no "
                    "like-for-like timing comparison possible")
    ratio = statistics.median(r.ratio for r in counted)
    assert 0.9 <= ratio <= 1.1, [dataclasses.asdict(r) for r in rounds]
    # the overhead matters here: the steady rate inside an epoch would miss by > 10 %
    assert statistics.median(r.measured / r.steady for r in counted) < 0.9
