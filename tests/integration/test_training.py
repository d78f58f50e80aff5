"""Distributed fits on a real two-process LocalCluster.

One cluster serves the module (start-up is the slow part); the failure test, which may
end a worker process, gets a cluster of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

import dask.config
import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch.utils.data import TensorDataset
from training_models import (
    DigitsMLP,
    FailingMLP,
    Logits,
    digits,
    notebook_class,
    set_failing,
)

import scalekit as sk
from scalekit.errors import TrainingError, UsageError
from scalekit.events import EpochEnded, RankStatus, RunFinished, RunStarted
from scalekit.training.strategies import Prepared, RankSetup, Strategy, base

pytestmark = pytest.mark.timeout(180)  # hang guards, generous for a loaded machine

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()
EPOCHS = 20  # long enough to converge: accuracy then hardly depends on batch order


@pytest.fixture(scope="module", autouse=True)
def _checkpoints_in_tmp(tmp_path_factory):
    """Each fit checkpoints its epochs; keep them out of the shared temp folder."""
    import dask.config

    root = tmp_path_factory.mktemp("checkpoints")
    with dask.config.set({"scalekit.checkpoint.root": str(root)}):
        yield root


@pytest.fixture(scope="module")
def session(_checkpoints_in_tmp):
    s = sk.cluster(workers=2)
    try:
        s.wait_for_workers(2)
        yield s
    finally:
        s.close()


def make_net(module=DigitsMLP, seed=0, **kwargs):
    torch.manual_seed(seed)  # same initial weights for every net built with this seed
    params = {
        "max_epochs": EPOCHS, "lr": 0.1, "optimizer__momentum": 0.9, "batch_size": 64,
        "module__hidden": 128, "iterator_train__shuffle": True, "verbose": 0, **kwargs,
    }
    return NeuralNetClassifier(module, **params)


def fit_here(net, X=X_TRAIN, y=Y_TRAIN):
    """An ordinary skorch fit in this process, single-threaded like each worker (two
    threads on a shared two-core machine are slower and much noisier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return net.fit(X, y)
    finally:
        torch.set_num_threads(threads)


def collect(bus):
    events = []
    unsubscribe = bus.subscribe(events.append, replay=False)
    return events, unsubscribe


def test_distributed_fit_matches_a_single_process_fit(session, tmp_path):
    single = fit_here(make_net())

    net = make_net()
    run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False)
    assert run.status == "finished"
    assert run.net is net

    # the same accuracy (not the same parameters: rounding differs; see the notes)
    single_acc = single.score(X_TEST, Y_TEST)
    dist_acc = net.score(X_TEST, Y_TEST)
    assert single_acc > 0.95
    assert abs(dist_acc - single_acc) <= 0.02, (single_acc, dist_acc)

    # one history row per epoch, with what skorch records
    assert len(net.history) == EPOCHS
    assert net.history[:, "epoch"] == list(range(1, EPOCHS + 1))
    for key in ("train_loss", "valid_loss", "valid_acc", "dur"):
        values = net.history[:, key]
        assert all(np.isfinite(values)), key
    assert net.history[-1, "train_loss"] < net.history[0, "train_loss"]
    assert abs(net.history[-1, "valid_acc"] - single.history[-1, "valid_acc"]) <= 0.03
    # every training batch counted once, at its global size
    assert sum(net.history[-1, "batches", :, "train_batch_size"]) == sum(
        single.history[-1, "batches", :, "train_batch_size"])

    # an ordinary fitted skorch net in this process
    pred = net.predict(X_TEST)
    proba = net.predict_proba(X_TEST)
    assert pred.shape == Y_TEST.shape
    assert proba.shape == (len(X_TEST), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred, proba.argmax(axis=1))
    assert dist_acc == pytest.approx(np.mean(pred == Y_TEST))

    params = tmp_path / "params.pt"
    net.save_params(f_params=params)
    reloaded = make_net(seed=99).initialize()
    reloaded.load_params(f_params=params)
    np.testing.assert_array_equal(reloaded.predict(X_TEST), pred)


@pytest.mark.parametrize("host_reduce", [True, False], ids=["shared memory", "gloo"])
def test_same_sgd_steps_as_a_single_process_without_shuffling(session, host_reduce):
    """Unshuffled, both runs see the same batches: per-epoch losses agree closely, whether
    the ranks average through shared memory (the default on one host) or gloo."""
    single = fit_here(make_net(max_epochs=3, iterator_train__shuffle=False))
    net = make_net(max_epochs=3, iterator_train__shuffle=False)
    with dask.config.set({"scalekit.training.host-reduce": host_reduce}):
        run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False)
    assert run.report.transport == ("shared memory" if host_reduce else "gloo",) * 2
    np.testing.assert_allclose(net.history[:, "train_loss"], single.history[:, "train_loss"],
                               rtol=2e-3)
    np.testing.assert_allclose(net.history[:, "valid_loss"], single.history[:, "valid_loss"],
                               rtol=2e-3)


def test_train_a_plain_torch_module(session):
    X = torch.from_numpy(X_TRAIN)
    y = torch.from_numpy(Y_TRAIN)
    torch.manual_seed(0)
    module = Logits()
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        before = loss_fn(module(X), y).item()
    trained = sk.train(
        module, TensorDataset(X, y), criterion=torch.nn.CrossEntropyLoss, lr=0.1,
        max_epochs=5, batch_size=64, optimizer__momentum=0.9, cluster=session, show=False,
    )
    assert isinstance(trained, torch.nn.Module)
    with torch.no_grad():
        after = loss_fn(trained(X), y).item()
        accuracy = (trained(torch.from_numpy(X_TEST)).argmax(1).numpy() == Y_TEST).mean()
    assert after < 0.5 * before, (before, after)
    assert accuracy > 0.85


def test_a_module_class_defined_in_a_notebook_travels_by_value(session, monkeypatch):
    cls = notebook_class()
    # as in a notebook kernel: this process's __main__ holds the class, the workers' not
    monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    torch.manual_seed(0)
    net = NeuralNetClassifier(cls, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
                              lr=0.1, optimizer__momentum=0.9, batch_size=64, verbose=0)
    sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False)
    assert type(net.module_) is cls  # the notebook's class, with the trained weights
    assert net.score(X_TEST, Y_TEST) > 0.8


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (X_TRAIN, Y_TRAIN[:-3], "samples but y has"),
        (X_TRAIN[:, :60], Y_TRAIN, "input size"),
    ],
    ids=["length-mismatch", "wrong-width"],
)
def test_bad_inputs_fail_before_anything_runs(session, X, y, match):
    events, unsubscribe = collect(session.bus)
    started = time.monotonic()
    try:
        with pytest.raises(UsageError, match=match):
            sk.fit(make_net(), X, y, cluster=session, show=False)
    finally:
        unsubscribe()
    assert time.monotonic() - started < 10
    assert not [e for e in events if isinstance(e, RunStarted)]  # nothing was shipped


def test_fit_in_the_background(session):
    net = make_net(max_epochs=3)
    run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, wait=False, show=False)
    assert run.status == "running"
    assert not run.done
    assert run.wait(timeout=90) is net
    assert run.status == "finished" and run.error is None
    assert len(net.history) == 3
    assert net.score(X_TEST, Y_TEST) > 0.7


def test_a_fit_is_recorded_on_the_cluster_without_a_scheduler_warning(session, caplog):
    # the scheduler runs in this process: what it logs is what a notebook would show
    with caplog.at_level(logging.WARNING, logger="distributed"):
        run = sk.fit(make_net(max_epochs=1), X_TRAIN, Y_TRAIN, cluster=session, show=False)
        listed = {r["run_id"]: r for r in sk.runs(session)}
    assert listed[run.run_id]["state"] == "finished"
    assert not [r.getMessage() for r in caplog.records if "scalekit" in r.getMessage()]


def test_progress_events_on_the_session_bus(session):
    events, unsubscribe = collect(session.bus)
    try:
        run = sk.fit(make_net(max_epochs=3), X_TRAIN, Y_TRAIN, cluster=session, show=False)
    finally:
        unsubscribe()
    mine = [e for e in events if getattr(e, "run_id", None) == run.run_id]
    assert isinstance(mine[0], RunStarted)
    started = mine[0]
    assert (started.max_epochs, started.batch_size, started.world_size) == (3, 64, 2)
    assert started.n_samples == len(X_TRAIN)
    epochs = [e for e in mine if isinstance(e, EpochEnded)]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert all(e.world_size == 2 for e in epochs)
    assert {"train_loss", "valid_loss", "valid_acc"} <= set(epochs[-1].row)
    assert epochs[-1].row["train_loss"] == pytest.approx(run.net.history[-1, "train_loss"])
    finished = [e for e in mine if isinstance(e, RunFinished)]
    assert len(finished) == 1 and mine[-1] is finished[0]
    assert (finished[0].status, finished[0].epochs) == ("finished", 3)
    # the run keeps its own record of the same events
    assert [e for e in run.events if hasattr(e, "run_id")] == mine


@dataclasses.dataclass(frozen=True)
class EpochAverage(Strategy):
    """A fifth strategy, written in a test (the workers import it from this module):
    each rank steps alone on its piece of every global batch, and the ranks average
    their parameters at each epoch end, recording how far apart they were afterwards."""

    name = "epoch_average"

    def prepare(self, net, setup: RankSetup) -> Prepared:
        base.average_parameters(net.module_)  # start from identical weights
        return Prepared(self, net.module_, net.module_, net.module_, net=net)

    def loss_weight(self, piece, batch, world_size):
        return 1.0

    def end_epoch(self, prepared):
        import torch.distributed as dist

        base.sync_if_drifted(prepared)
        flat = torch.cat([p.detach().reshape(-1) for p in prepared.model.parameters()])
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        prepared.net.history.record("averaged_at", prepared.synced_at)
        prepared.net.history.record("spread", float((high - low).max()))


def test_a_strategy_registered_in_a_test_trains_on_two_workers(session):
    """One class and one registry line: sk.fit knows it by name, both ranks run its
    hooks (their parameters agree after every epoch's average), and the fitted net is
    an ordinary one."""
    sk.strategies.register(EpochAverage)
    try:
        net = make_net(max_epochs=4)
        run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False,
                     strategy="epoch_average")
    finally:
        sk.strategies.unregister("epoch_average")
    assert run.status == "finished"
    assert (run.report.strategy, run.report.world_size) == ("epoch_average", 2)
    assert net.history[:, "spread"] == [0.0] * 4
    steps = net.history[0, "averaged_at"]  # both ranks take every step of an epoch
    assert steps > 0 and net.history[:, "averaged_at"] == [steps * e for e in (1, 2, 3, 4)]
    assert net.score(X_TEST, Y_TEST) > 0.9


def wait_for_responsive_workers(session, n, timeout):
    """Until ``n`` workers are connected and each answers (a worker that was just
    ended may still be listed for a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(session.client.run(os.getpid)) == n:
                return
        except Exception:  # a worker went away while we asked
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {n} responsive workers after {timeout}s")


@pytest.mark.timeout(240)  # a hang guard; a fresh cluster's first fit imports torch
def test_an_error_on_one_rank_surfaces_with_its_traceback(local_session):
    session = local_session  # its own cluster: the peer blocked in a collective is ended
    session.wait_for_workers(2)
    workers = sorted(session.client.nthreads())
    bad = workers[1]  # ranks follow the sorted addresses: this is rank 1
    assert session.client.run(set_failing, True, workers=[bad]) == {bad: True}
    training_since = []  # when the ranks started training (after imports and rendezvous)
    unsubscribe = session.bus.subscribe(
        lambda e: training_since.append(time.monotonic())
        if isinstance(e, RankStatus) and e.state == "training" else None, replay=False)

    try:
        with pytest.raises(TrainingError) as info:
            sk.fit(make_net(FailingMLP, max_epochs=2), X_TRAIN, Y_TRAIN, cluster=session,
                   show=False)
    finally:
        unsubscribe()
    assert training_since, "the ranks never started training"
    took = time.monotonic() - training_since[0]
    assert took < 15, f"the failure took {took:.1f}s to surface"
    err = info.value
    assert (err.rank, err.worker) == (1, bad)
    message = str(err)
    assert f"rank 1 on worker {bad} failed: RuntimeError: injected failure" in message
    # the original traceback, with the worker-side frames
    assert "training_models.py" in err.remote_traceback
    assert "in forward" in err.remote_traceback
    assert err.remote_traceback in message
    assert isinstance(err.__cause__, RuntimeError)

    # the cluster recovers: two workers again (the blocked peer's worker is restarted)
    # and a new fit succeeds
    session.client.run(set_failing, False, workers=[bad])
    wait_for_responsive_workers(session, 2, timeout=45)
    net = make_net(max_epochs=3)
    sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False)
    assert len(net.history) == 3
    assert net.score(X_TEST, Y_TEST) > 0.8


def test_a_resumed_fit_keeps_its_lr_schedule(session, tmp_path):
    """The LR scheduler's position is checkpointed: 3 epochs, then a resume to 5, end
    at the rate of 5 uninterrupted epochs (skorch alone would take one extra step)."""
    from skorch.callbacks import LRScheduler

    def net(epochs):
        step = LRScheduler(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
        return make_net(max_epochs=epochs, lr=0.1, callbacks=[("step", step)])

    folder = str(tmp_path / "ckpt")
    sk.fit(net(3), X_TRAIN, Y_TRAIN, cluster=session, show=False, checkpoint=folder)
    resumed = net(5)
    sk.fit(resumed, X_TRAIN, Y_TRAIN, cluster=session, show=False, checkpoint=folder,
           resume=True)
    assert len(resumed.history) == 5
    assert resumed.optimizer_.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**5)


# -- precision and devices ---------------------------------------------------------------


def test_bf16_trains_as_well_as_float32_and_checkpoints_stay_float32(session, tmp_path):
    reference = make_net()
    sk.fit(reference, X_TRAIN, Y_TRAIN, cluster=session, show=False, checkpoint=False)
    net = make_net()
    url = str(tmp_path / "bf16")
    run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False, precision="bf16",
                 checkpoint=url)
    assert run.status == "finished"
    acc, ref_acc = net.score(X_TEST, Y_TEST), reference.score(X_TEST, Y_TEST)
    assert abs(acc - ref_acc) <= 0.01, (acc, ref_acc)  # within one point
    assert all(p.dtype == torch.float32 for p in net.module_.parameters())

    from scalekit.training.checkpoint import CheckpointStore

    state, _ = CheckpointStore(url).load_latest()
    assert {v.dtype for v in state["module"].values()} == {torch.float32}
    assert state["config"]["training"]["precision"] == "bf16"

    # and a float32 run resumes from it (checkpoints do not depend on the precision)
    more = make_net(max_epochs=EPOCHS + 2)
    sk.fit(more, X_TRAIN, Y_TRAIN, cluster=session, show=False, checkpoint=url, resume=True)
    assert len(more.history) == EPOCHS + 2
    assert more.score(X_TEST, Y_TEST) >= acc - 0.02


def test_fp16_on_cpus_is_refused_before_anything_starts(session):
    from scalekit.errors import ConfigError

    before = set(session.client.nthreads())
    with pytest.raises(ConfigError) as info:
        sk.fit(make_net(), X_TRAIN, Y_TRAIN, cluster=session, show=False, precision="fp16")
    assert "precision='bf16'" in str(info.value)
    assert set(session.client.nthreads()) == before


def test_a_cuda_net_on_cpu_workers_gets_a_clear_error_and_the_cluster_is_unchanged(session):
    before = set(session.client.nthreads())
    net = make_net(device="cuda")
    with pytest.raises(UsageError) as info:
        sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, show=False)
    message = str(info.value)
    assert "has no GPU" in message and "sk.cluster(gpus='auto')" in message
    assert "device='cpu'" in message and "Nothing was started" in message
    assert set(session.client.nthreads()) == before
    assert net.device == "cuda"  # the user's setting is left as it was


def test_fits_leave_no_round_state_on_the_scheduler(session):
    """Each round's rendezvous variable and stop event are gone once it ends (one of
    each per round used to stay on the scheduler for good)."""
    sk.fit(make_net(max_epochs=2), X_TRAIN, Y_TRAIN, cluster=session, show=False,
           checkpoint=False)

    def scalekit_names(dask_scheduler):
        variables = dask_scheduler.extensions["variables"].variables
        events = dask_scheduler.extensions["events"]._events
        return [str(n) for n in [*variables, *events] if "scalekit" in str(n)]

    assert session.client.run_on_scheduler(scalekit_names) == []
