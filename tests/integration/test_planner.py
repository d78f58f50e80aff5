"""The planner end to end on real LocalClusters: probe, model, solve, apply.

On this machine's cores: the probes run on the session (1 thread per worker: 1 and 2
workers, ddp and fsdp) and on a temporary one-worker cluster with all the cores as
threads; the plan is then applied (the cluster scaled, or one of the plan's shape
started) and the fit trains. Run with ``-s`` to see the measurements and the table::

    pytest tests/integration/test_planner.py -s -m slow
"""

from __future__ import annotations

import os

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
