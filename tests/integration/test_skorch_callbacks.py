"""skorch callbacks under ``sk.fit`` on real two-worker LocalClusters (issue 16): each runs
where docs/callbacks.md says, the epoch log is printed once in the caller, skorch's
Checkpoint/LoadInitState work as skorch users expect, TensorBoard and MLflow get one run
with one value per metric per epoch (also across a resize and a killed worker), and the
callbacks' state continues across a recovery as if nothing happened.

The trackers are real: ``torch.utils.tensorboard`` event files read back with
TensorBoard's own reader, and an MLflow file store (``MLFLOW_ALLOW_FILE_STORE``, set
before the clusters start so their workers inherit it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from distributed import Event
from skorch import NeuralNetClassifier
from skorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    LoadInitState,
    LRScheduler,
    MlflowLogger,
    PassthroughScoring,
    TensorBoard,
)
from training_models import (
    CountedCallback,
    CountedEarlyStopping,
    CountedEpochScoring,
    CountedGradientNormClipping,
    CountedLRScheduler,
    CountedPrintLog,
    CountedTensorBoard,
    DigitsMLP,
    FakeScore,
    HoldWhileFileExists,
    RaiseOnRank,
    SaveCountingCheckpoint,
    digits,
    read_calls,
)

import scalekit as sk
from scalekit.errors import TrainingError, UsageError
from scalekit.events import LogLine, Recovered, Resized, RunStarted
from scalekit.training.callback_rules import on_rank_zero
from scalekit.training.rounds import warm_worker

mlflow = pytest.importorskip("mlflow")
tensorboard = pytest.importorskip("tensorboard")

pytestmark = pytest.mark.timeout(300)

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()
BATCHES = -(-len(X_TRAIN) // 64)  # 22 training steps an epoch (20% go to validation)
FIT_TIMEOUT = 240


@pytest.fixture(scope="module", autouse=True)
def _tracking_environment():
    """MLflow's file store (opt-in since MLflow 3), no telemetry: set before any cluster
    starts, as a user would, so that the workers inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def shared(_tracking_environment, tmp_path_factory):
    import dask.config

    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path_factory.mktemp("ck"))}):
        session = sk.cluster(workers=2)
        try:
            session.wait_for_workers(2, timeout=120)
            yield session
        finally:
            session.close()


@pytest.fixture
def own(request, _tracking_environment, tmp_path):
    """A cluster of its own, for fits that end or kill workers (the nanny's replacement
    processes would count as leaks of a shared one). ``workers`` via indirect."""
    import dask.config

    workers = getattr(request, "param", 2)
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "default-ckpt")}):
        session = sk.cluster(workers=workers)
        try:
            session.wait_for_workers(workers, timeout=120)
            yield session
        finally:
            session.close()


def make_net(max_epochs, callbacks, **kwargs):
    torch.manual_seed(0)
    return NeuralNetClassifier(DigitsMLP, max_epochs=max_epochs, lr=0.2, batch_size=64,
                               callbacks=callbacks, **kwargs)


def fake_scoring():
    """A score that improves for 3 epochs, then worsens (training_models.FAKE_SCORES)."""
    return [("fake", FakeScore()), ("fake_score", PassthroughScoring(name="fake",
                                                                     on_train=True))]


def printed_rows(lines):
    """Epoch numbers of PrintLog's rows among printed lines."""
    return [int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()]


def tensorboard_steps(folder, tag="Loss/train_loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def mlflow_runs(uri):
    client = mlflow.tracking.MlflowClient(uri)
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def metric_steps(client, run, key="train_loss"):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def of(run, kind):
    return [e for e in list(run.events) if isinstance(e, kind)]


def wait_until(condition, timeout, what, run=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if run is not None and run.done:
            run.wait()
            raise AssertionError(f"the fit ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- where each kind runs, and the log once ------------------------------------------------


def test_each_callback_runs_where_the_table_says_and_logs_once(shared, tmp_path, monkeypatch,
                                                                capsys):
    from torch.utils.tensorboard import SummaryWriter

    epochs = 5
    calls = tmp_path / "calls"
    calls.mkdir()
    # the cluster's workers started elsewhere: relative folders are the caller's
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    callbacks = [
        *fake_scoring(),
        ("cp", SaveCountingCheckpoint(calls, dirname="cp", monitor="fake_best")),
        ("es", CountedEarlyStopping(calls, "EarlyStopping", monitor="fake", patience=9)),
        ("lr", CountedLRScheduler(calls, "LRScheduler", policy="StepLR", step_size=2)),
        ("clip", CountedGradientNormClipping(calls, "GradientNormClipping", 1.0)),
        ("acc", CountedEpochScoring(calls, "EpochScoring", "accuracy", name="acc")),
        ("tb", CountedTensorBoard(calls, "TensorBoard", SummaryWriter("tb"))),
        ("custom", CountedCallback(calls, "custom")),
        ("notifier", on_rank_zero(CountedCallback(calls, "notifier"))),
        ("ml", MlflowLogger(create_artifact=False)),
    ]
    with mlflow.start_run() as tracked:
        net = make_net(epochs, callbacks, verbose=1,
                       callbacks__print_log=CountedPrintLog(calls, "PrintLog"))
        run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=shared, show=False)
    printed = capsys.readouterr().out.splitlines()
    assert [e.world_size for e in of(run, RunStarted)] == [2]

    per_epoch = {"on_epoch_begin": epochs, "on_epoch_end": epochs,
                 "on_train_begin": 1, "on_train_end": 1}
    for label in ("EarlyStopping", "LRScheduler", "GradientNormClipping", "EpochScoring",
                  "custom"):  # decide the training: on both ranks, in lock-step
        found = read_calls(calls, label)
        assert sorted(found) == ["0", "1"], (label, found)
        for rank, got in found.items():
            counts = Counter(hook for hook, _ in got)
            assert {k: counts[k] for k in per_epoch} == per_epoch, (label, rank)
        assert Counter(found["0"]) == Counter(found["1"]), label  # the same calls
    for label in ("PrintLog", "TensorBoard", "notifier"):  # side effects: rank 0 only
        found = read_calls(calls, label)
        assert sorted(found) == ["0"], (label, found)
        counts = Counter(hook for hook, _ in found["0"])
        assert {k: counts[k] for k in per_epoch} == per_epoch, label

    # the epoch log: printed once, in the caller, a header and one row per epoch
    assert printed_rows(printed) == list(range(1, epochs + 1)), printed
    assert sum("train_loss" in line for line in printed) == 1
    assert printed_rows(run.log) == list(range(1, epochs + 1))
    assert of(run, LogLine)

    # skorch's Checkpoint: one save per improvement, by rank 0, in the caller's folder
    improvements = sum(run.net.history[:, "fake_best"])
    assert improvements == 3
    assert read_calls(calls, "saves") == {"0": [("save", 1), ("save", 2), ("save", 3)]}
    assert sorted(os.listdir(tmp_path / "cp")) == [
        "criterion.pt", "history.json", "optimizer.pt", "params.pt"]

    # TensorBoard and MLflow: one run, one value per metric per epoch
    assert tensorboard_steps(tmp_path / "tb") == list(range(1, epochs + 1))
    client, runs = mlflow_runs(f"file://{tmp_path}/mlruns")
    assert [r.info.run_id for r in runs] == [tracked.info.run_id]
    assert metric_steps(client, runs[0]) == list(range(1, epochs + 1))
    assert client.get_run(tracked.info.run_id).info.status == "FINISHED"

    # what the callbacks learned is in the caller's net, as after skorch's fit
    es = dict(run.net.callbacks_)["es"]
    assert (es.misses_, es.best_epoch_) == (2, 3)


def test_load_init_state_resumes_an_sk_fit_from_skorchs_checkpoint(shared, tmp_path):
    def net(max_epochs):
        cp = Checkpoint(dirname=str(tmp_path / "cp"), monitor="fake_best")
        return make_net(max_epochs, [*fake_scoring(), ("cp", cp),
                                     ("load", LoadInitState(cp))], verbose=0)

    first = sk.fit(net(4), X_TRAIN, Y_TRAIN, cluster=shared, show=False).net
    assert first.history[:, "event_cp"] == [True, True, True, False]
    resumed = sk.fit(net(2), X_TRAIN, Y_TRAIN, cluster=shared, show=False).net
    # it continued from the best checkpoint (epoch 3) for 2 more epochs, as skorch does
    assert resumed.history[:, "epoch"] == [1, 2, 3, 4, 5]
    assert resumed.history[:3, "train_loss"] == first.history[:3, "train_loss"]
    assert resumed.history[:, "fake"] == [5.0, 4.0, 3.0, 3.5, 3.6]


# -- bad input -----------------------------------------------------------------------------


class HoldsALock(Callback):
    def __init__(self):
        self.lock = threading.Lock()


def test_an_unpicklable_callback_is_refused_before_training(shared):
    net = make_net(2, [("locked", HoldsALock())], verbose=0)
    events = []
    unsubscribe = shared.bus.subscribe(events.append, replay=False)
    try:
        with pytest.raises(UsageError, match="callback 'locked' .*attribute 'lock'"):
            sk.fit(net, X_TRAIN, Y_TRAIN, cluster=shared, show=False)
    finally:
        unsubscribe()
    assert not [e for e in events if isinstance(e, RunStarted)]


def test_a_callback_raising_on_one_rank_stops_the_fit_with_that_ranks_traceback(own):
    net = make_net(4, [("boom", RaiseOnRank(rank=1, epoch=2))], verbose=0)
    started = time.monotonic()
    with pytest.raises(TrainingError) as info:
        sk.fit(net, X_TRAIN, Y_TRAIN, cluster=own, show=False)
    assert time.monotonic() - started < FIT_TIMEOUT
    error = info.value
    assert error.rank == 1
    assert "callback failed on rank 1 in epoch 2" in str(error)
    assert "RaiseOnRank" in error.remote_traceback or "on_epoch_end" in error.remote_traceback
    client = own.client
    wait_until(lambda: not any("scalekit-rank" in str(k)
                               for keys in client.processing().values() for k in keys),
               60, "no rank left")


def test_a_side_effect_folder_rank_zero_cannot_write_is_a_clear_error(own):
    net = make_net(2, [("cp", Checkpoint(dirname="/sys/kernel"))], verbose=0)
    with pytest.raises(TrainingError) as info:
        sk.fit(net, X_TRAIN, Y_TRAIN, cluster=own, show=False)
    message = str(info.value)
    assert info.value.rank == 0
    assert "CallbackTargetError" in message
    assert "callback 'cp' (Checkpoint) cannot write to '/sys/kernel'" in message


# -- a resize ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("own", [1], indirect=True)
def test_trackers_keep_one_value_per_epoch_across_a_resize(own, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    epochs = 5
    hold = tmp_path / "hold"
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    hold.write_text("1")  # hold at the end of epoch 2
    with mlflow.start_run() as tracked:
        # wait=False: the fit initializes the net in a thread of its own, where the
        # active run (a per-thread value) is unknown: pass it
        callbacks = [("hold", HoldWhileFileExists(hold)),
                     ("tb", TensorBoard(SummaryWriter(str(tmp_path / "tb")))),
                     ("ml", MlflowLogger(run=mlflow.get_run(tracked.info.run_id),
                                         create_artifact=False))]
        run = sk.fit(make_net(epochs, callbacks, verbose=1), X_TRAIN, Y_TRAIN, cluster=own,
                     show=False, wait=False)
        try:
            wait_until(lambda: Path(f"{hold}.held").exists(), FIT_TIMEOUT, "epoch 2", run)
            own.scale(2)
            own.wait_for_workers(2, timeout=180)
            training = {e.worker for e in list(run.events)
                        if type(e).__name__ == "RankStatus"}
            for address in set(own.client.nthreads()) - training:  # the new one only
                own.client.submit(warm_worker, workers=[address], allow_other_workers=False,
                                  pure=False).result(timeout=180)
            # release once the round asked its ranks to stop for the new worker
            stop = Event(f"scalekit-stop-{run.run_id}-g0", client=own.client)
            wait_until(stop.is_set, FIT_TIMEOUT, "the round to stop for a resize", run)
        finally:
            hold.unlink(missing_ok=True)
        run.wait(timeout=FIT_TIMEOUT)
    resized = of(run, Resized)
    assert [(e.old, e.new) for e in resized] == [(1, 2)]
    assert tensorboard_steps(tmp_path / "tb") == list(range(1, epochs + 1))
    client, runs = mlflow_runs(f"file://{tmp_path}/mlruns")
    assert [r.info.run_id for r in runs] == [tracked.info.run_id]
    assert metric_steps(client, runs[0]) == list(range(1, epochs + 1))
    assert client.get_run(tracked.info.run_id).info.status == "FINISHED"
    assert printed_rows(run.log) == list(range(1, epochs + 1))
    assert sum("train_loss" in line for line in run.log) == 1  # no second header


# -- a killed worker -----------------------------------------------------------------------


def reference_history(callbacks, max_epochs):
    """The same callbacks in plain skorch, in this process: what an undisturbed fit does."""
    net = make_net(max_epochs, callbacks, verbose=0)
    net.fit(X_TRAIN, Y_TRAIN)
    return net


def stateful_callbacks(tmp_path=None):
    cp = (SaveCountingCheckpoint(tmp_path / "calls", dirname=str(tmp_path / "cp"),
                                 monitor="fake_best")
          if tmp_path is not None else Checkpoint(dirname=None, monitor="fake_best",
                                                  f_params=None, f_optimizer=None,
                                                  f_criterion=None, f_history=None))
    return [*fake_scoring(), ("cp", cp),
            ("es", EarlyStopping(monitor="fake", patience=4)),
            ("lr", LRScheduler(policy=torch.optim.lr_scheduler.ReduceLROnPlateau,
                               monitor="fake", patience=1, factor=0.5))]


@pytest.mark.slow
def test_callback_state_and_trackers_continue_across_a_killed_worker(own, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    max_epochs = 12
    expected = reference_history(stateful_callbacks(), max_epochs)
    stop = len(expected.history)
    assert stop == 7  # EarlyStopping: 4 epochs without improvement after epoch 3

    (tmp_path / "calls").mkdir()
    hold = tmp_path / "hold-mid"
    hold.write_text("5")  # hold mid-epoch in epochs after the 5th: epoch 6
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    with mlflow.start_run() as tracked:
        callbacks = [*stateful_callbacks(tmp_path),
                     ("hold", HoldWhileFileExists(hold, at_batch=BATCHES // 3)),
                     ("tb", TensorBoard(SummaryWriter(str(tmp_path / "tb")))),
                     ("ml", MlflowLogger(run=mlflow.get_run(tracked.info.run_id),
                                         create_artifact=False))]
        run = sk.fit(make_net(max_epochs, callbacks, verbose=1), X_TRAIN, Y_TRAIN,
                     cluster=own, checkpoint=str(tmp_path / "ckpt"), show=False, wait=False)
        try:
            wait_until(lambda: Path(f"{hold}.held").exists(), FIT_TIMEOUT, "epoch 6", run)
            ranks = {e.rank: e.worker for e in list(run.events)
                     if type(e).__name__ == "RankStatus" and e.state == "training"}
            pid = own.client.run(os.getpid, workers=[ranks[1]])[ranks[1]]
            os.kill(pid, signal.SIGKILL)
        finally:
            hold.unlink(missing_ok=True)
        net = run.wait(timeout=FIT_TIMEOUT)
    recovered = of(run, Recovered)
    assert len(recovered) == 1 and recovered[0].epoch == 5  # from epoch 5's checkpoint

    # as if nothing happened: the same stop, the same learning rates, the same saves
    assert len(net.history) == stop
    for key in ("fake", "fake_best", "event_cp"):
        assert net.history[:, key] == expected.history[:, key], key
    assert net.optimizer_.param_groups[0]["lr"] == expected.optimizer_.param_groups[0]["lr"]
    assert dict(net.callbacks_)["es"].misses_ == 4
    saves = read_calls(tmp_path / "calls", "saves")
    assert list(saves) == ["0"] and saves["0"] == [("save", 1), ("save", 2), ("save", 3)]

    # the epochs trained again after the recovery are not logged twice (as in skorch,
    # EarlyStopping ends the last epoch before the loggers after it see it)
    assert printed_rows(run.log) == list(range(1, stop)), run.log
    assert sum("Stopping since fake has not improved" in line for line in run.log) == 1
    assert tensorboard_steps(tmp_path / "tb") == list(range(1, stop))
    client, runs = mlflow_runs(f"file://{tmp_path}/mlruns")
    assert [r.info.run_id for r in runs] == [tracked.info.run_id]
    assert metric_steps(client, runs[0]) == list(range(1, stop))
