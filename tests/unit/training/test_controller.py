"""The controller's checks and bookkeeping, without a cluster."""

from __future__ import annotations

import copy
import inspect
import threading
import time

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn

from scalekit.config import TrainConfig
from scalekit.errors import TrainingError, UsageError
from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    EventBus,
    Notice,
    RankStatus,
    Recovered,
    RunFinished,
    RunStarted,
    TrainingReport,
)
from scalekit.training import state as training_state
from scalekit.training.controller import TrainingController
from scalekit.training.messages import (
    BatchDone,
    CheckpointDone,
    EpochDone,
    Position,
    RankPhase,
    RankUpdate,
)
from scalekit.training.policy import Failure, is_peer_failure
from scalekit.training.preflight import check_net, preflight
from scalekit.training.rank import RankResult, RankSpec, RendezvousError
from scalekit.training.rounds import Beacons, OutcomeKind, Round, RoundOutcome
from scalekit.training.run_state import RunState, TransitionError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


class MLP(nn.Module):
    def __init__(self, n_in=6, hidden=8):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 2),
                                 nn.Softmax(dim=-1))

    def forward(self, X):
        return self.seq(X)


class Locked(MLP):
    """Holds a lock: cannot be pickled to the workers."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


def classifier(**kwargs):
    params = {"max_epochs": 2, "lr": 0.1, "batch_size": 8, "verbose": 0, **kwargs}
    return NeuralNetClassifier(MLP, **params)


# -- preflight -----------------------------------------------------------------------


def test_preflight_accepts_good_inputs():
    preflight(classifier(), X, Y)
    preflight(classifier().initialize(), X, Y)


def test_preflight_accepts_a_module_class_defined_inside_a_function():
    """It travels by value (cloudpickle), so the probe must not need it importable."""

    def make():
        class Local(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(X.shape[1], 2)

            def forward(self, x):
                return torch.softmax(self.lin(x), dim=-1)

        return Local

    net = NeuralNetClassifier(make(), verbose=0).initialize()
    preflight(net, X, Y)


def test_preflight_rejects_x_and_y_of_different_lengths():
    with pytest.raises(UsageError, match="X has 40 samples but y has 39"):
        preflight(classifier(), X, Y[:-1])


@pytest.mark.parametrize("obj", [MLP(), object(), "net", None])
def test_preflight_rejects_what_is_not_a_skorch_net(obj):
    with pytest.raises(UsageError, match="expected a skorch net") as info:
        preflight(obj, X, Y)
    assert type(obj).__name__ in str(info.value)
    with pytest.raises(UsageError, match="scalekit.train"):
        check_net(obj)


@pytest.mark.parametrize("module", [Locked, Locked()], ids=["class", "instance"])
def test_preflight_rejects_a_net_that_cannot_be_pickled(module):
    net = NeuralNetClassifier(module, verbose=0)
    if not isinstance(module, nn.Module):
        net.initialize()  # the lock only exists once the module is built
    with pytest.raises(UsageError, match="cannot be pickled") as info:
        preflight(net, X, Y)
    assert "lock" in str(info.value).lower()


@pytest.mark.parametrize(
    ("net", "X_", "y_", "words"),
    [
        # the module wants 6 features; X has 5
        (classifier(), X[:, :5], Y, ["input size", "mat1 and mat2"]),
        (classifier(module__n_in=9), X, Y, ["input size", "shapes cannot be multiplied"]),
        # float64 inputs against float32 weights
        (classifier(), X.astype(np.float64), Y, ["dtype"]),
    ],
    ids=["too-few-features", "too-many-features", "float64"],
)
def test_preflight_runs_the_module_on_two_samples(net, X_, y_, words):
    with pytest.raises(UsageError, match="failed on a 2-sample batch of X") as info:
        preflight(net, X_, y_)
    message = str(info.value)
    for word in words:
        assert word in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_preflight_does_not_touch_the_users_net():
    net = classifier().initialize()
    before = copy.deepcopy(net.module_.state_dict())
    preflight(net, X, Y)
    for k, v in net.module_.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(net.history) == 0


def test_preflight_rejects_labels_the_loss_cannot_use():
    # NLLLoss wants int64 class labels
    with pytest.raises(UsageError, match="before training started") as info:
        preflight(classifier(), X, Y.astype(np.float32))
    assert "int64 class labels" in str(info.value)


def test_preflight_accepts_a_regressor_and_data_without_y():
    preflight(NeuralNetRegressor(MLP, verbose=0), X, X[:, :2].copy())
    preflight(classifier(), X, None)  # nothing to compare lengths with; forward only


def test_preflight_rejects_empty_data():
    with pytest.raises(UsageError, match="no samples"):
        preflight(classifier(), X[:0], Y[:0])


# -- peer failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "peer"),
    [
        (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
                      "Connection closed by peer [127.0.0.1]:4242"), True),
        (RuntimeError("Connection reset by peer"), True),
        (RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
                      "Timed out waiting 60000ms for recv operation to complete"), True),
        (RendezvousError("rank 1 waited 30s for rank 0's store address"), True),
        (TimeoutError("user code: rendezvous with the database timed out"), False),
        (BrokenPipeError(32, "Broken pipe"), True),
        (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, unhandled system error"), True),
        (RuntimeError("injected failure in forward"), False),
        (ValueError("Expected input batch_size (3) to match target batch_size (4)"), False),
        (ZeroDivisionError("division by zero"), False),
        (KeyError("weight"), False),
        (MemoryError(), False),
    ],
)
def test_is_peer_failure(exc, peer):
    assert is_peer_failure(exc) is peer


# -- the fitted net: rank 0's final state, loaded where fit() loads it ---------------


def controller(net, client=None, **config):
    return TrainingController(client, net, X, Y, bus=EventBus(),
                              config=TrainConfig(**config), run_id="test")


def trained_elsewhere(epochs=2):
    torch.manual_seed(1)
    other = classifier(max_epochs=epochs, optimizer=torch.optim.SGD, optimizer__momentum=0.9)
    other.fit(X, Y)
    return other


def result_of(other, **state_overrides):
    """What rank 0 sends back after training ``other``."""
    state = training_state.capture(other, other.module_, epoch=len(other.history), step=0,
                                   world_size=2, seed=0, run_id="test")
    state.update(state_overrides)
    return RankResult(rank=0, worker="tcp://127.0.0.1:1", epochs_done=len(other.history),
                      state=state)


def finish(net, result, client=None):
    """The end of a fit whose last round returned ``result``: what the user's net gets,
    and the events that say so."""
    ctl = controller(net, client)
    ctl._enter(RunState.RUNNING)
    ctl.results, ctl._newest = [result], result.state
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    assert ctl._finish() is net
    assert ctl.state is RunState.FINISHED
    assert [type(e) for e in events] == [TrainingReport, RunFinished]
    assert (events[1].status, events[1].epochs) == ("finished", len(net.history))
    return ctl


def test_the_final_state_and_history_are_loaded_into_the_users_net():
    other = trained_elsewhere()
    torch.manual_seed(2)
    net = classifier(optimizer=torch.optim.SGD, optimizer__momentum=0.9).initialize()
    finish(net, result_of(other))

    for k, v in other.module_.state_dict().items():
        assert torch.equal(net.module_.state_dict()[k], v)
    momentum = [s["momentum_buffer"] for s in net.optimizer_.state_dict()["state"].values()]
    expected = [s["momentum_buffer"] for s in other.optimizer_.state_dict()["state"].values()]
    assert len(momentum) == len(expected) > 0
    for a, b in zip(momentum, expected, strict=True):
        assert torch.equal(a, b)
    # an ordinary skorch history: indexing and slicing work
    assert len(net.history) == 2
    assert net.history[:, "epoch"] == [1, 2]
    assert net.history[-1, "train_loss"] == other.history[-1, "train_loss"]
    assert net.history[-1, "valid_acc"] == other.history[-1, "valid_acc"]
    assert net.history[-1, "batches", 0, "train_loss"] == other.history[-1, "batches", 0,
                                                                        "train_loss"]
    np.testing.assert_array_equal(net.predict(X), other.predict(X))
    assert net.score(X, Y) == other.score(X, Y)
    # warm-starting from the applied state continues where rank 0 stopped
    net.partial_fit(X, Y, epochs=1)
    assert len(net.history) == 3
    assert net.history[-1, "epoch"] == 3


def test_a_final_state_without_optimizer_state_keeps_the_optimizer():
    other = trained_elsewhere(epochs=1)
    net = classifier().initialize()
    optimizer = net.optimizer_
    finish(net, result_of(other, optimizer=None, history=[]))
    assert net.optimizer_ is optimizer
    np.testing.assert_array_equal(net.predict(X), other.predict(X))


def test_only_complete_epochs_of_a_mid_epoch_state_are_kept():
    other = trained_elsewhere(epochs=2)
    net = classifier().initialize()
    # stopped 3 steps into epoch 2: the history's second row is unfinished
    finish(net, result_of(other, epoch=1, step=3))
    assert len(net.history) == 1


# -- errors name the rank and the worker -----------------------------------------------


def raised(exc):
    """``exc`` with a traceback, as a future's exception carries one."""
    try:
        raise exc
    except BaseException as caught:
        return caught


WORKERS = ["tcp://127.0.0.1:1000", "tcp://127.0.0.1:2000"]


def failed_round(failure, error=None):
    return RoundOutcome(OutcomeKind.FAILED, failure=failure, error=error,
                        failed_at=time.monotonic())


def running(ctl):
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    ctl._enter(RunState.RUNNING)
    ctl.generation = 1  # round 0 ran
    return events


def test_a_failure_in_user_code_raises_training_error_with_the_remote_traceback():
    user = raised(RuntimeError("injected failure in forward"))
    ctl = controller(None, FakeClient(WORKERS))
    events = running(ctl)
    with pytest.raises(TrainingError) as info:
        ctl._after_failure(failed_round(Failure("user", rank=1, worker=WORKERS[1]), user))
    err = info.value
    assert (err.rank, err.worker) == (1, WORKERS[1])
    assert f"rank 1 on worker {WORKERS[1]} failed" in str(err)
    assert "RuntimeError: injected failure in forward" in str(err)
    assert "raise exc" in err.remote_traceback  # the worker-side frames travel along
    assert err.remote_traceback in str(err)
    assert err.__cause__ is user
    assert isinstance(err, RuntimeError)  # code catching RuntimeError keeps working
    # the failed rank was reported before anything else (no recovery was attempted)
    assert [(type(e), e.state, e.rank, e.generation) for e in events] == [
        (RankStatus, "failed", 1, 0)]


def test_a_lost_rank_beyond_the_budget_is_reported_with_the_reason():
    ctl = controller(None, FakeClient(WORKERS), max_failures=0)
    running(ctl)
    with pytest.raises(TrainingError, match=r"rank 0 on worker .*:1000 lost: 1 failures in a "
                                            r"row without progress .* max_failures=0"):
        ctl._after_failure(failed_round(Failure("lost", rank=0, worker=WORKERS[0])))
    assert ctl.state is RunState.RECOVERING  # fit() then moves it to FAILED


# -- a round that fails: the root cause is named, blocked peers are ended ------------


class FakeFuture:
    """Like a distributed Future: a cancelled future no longer holds its exception."""

    def __init__(self, status, exc=None, result=None):
        self.status = status
        self._exc = exc
        self.result = result
        self.cancelled = False

    def exception(self):
        return self._exc if self.status == "error" else None

    def cancel(self):
        self.cancelled = True
        if self.status != "finished":
            self.status = "cancelled"


class FakeRoundClient:
    def __init__(self, workers):
        self.workers = {w: 1 for w in workers}
        self.ran: list[tuple] = []

    def nthreads(self):
        return dict(self.workers)

    def gather(self, futures):
        return [f.result for f in futures]

    def run(self, fn, workers=None, wait=True):
        # as distributed's Worker.run: only a coroutine function may be run without wait
        assert wait or inspect.iscoroutinefunction(fn), "Combination not supported"
        self.ran.append((fn.__name__, workers, wait))
        if fn.__name__ == "_exit_process":  # those workers leave the cluster
            for w in workers or list(self.workers):
                self.workers.pop(w, None)


class FakeStop:
    def set(self):
        pass


def watch(futures, client):
    spec = RankSpec(run_id="test", generation=0, world_size=len(futures), net=None,
                    max_epochs=1)
    round_ = Round(client, spec, WORKERS, [], beacons=Beacons(), hang_timeout=5.0,
                   max_world=2, shrink_to=lambda: None, kill=lambda *a: None)
    return round_._watch(futures, FakeStop())


def test_round_names_the_rank_whose_code_raised_not_the_peer_it_broke():
    user = raised(RuntimeError("injected failure in forward"))
    peer = raised(RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed by peer"))
    client = FakeRoundClient(WORKERS)
    outcome = watch([FakeFuture("error", peer), FakeFuture("error", user)], client)
    assert outcome.kind == "failed"
    assert (outcome.failure.kind, outcome.failure.rank) == ("user", 1)
    assert outcome.failure.worker == WORKERS[1]
    assert outcome.error is user
    assert client.ran == []  # nobody was stuck


def test_round_ends_a_peer_left_blocked_in_a_collective():
    client = FakeRoundClient(WORKERS)
    futures = [FakeFuture("pending"), FakeFuture("error", raised(ValueError("bad batch")))]
    outcome = watch(futures, client)
    assert (outcome.failure.kind, outcome.failure.rank) == ("user", 1)
    assert str(outcome.error) == "bad batch"  # kept although the futures were cancelled
    assert all(f.cancelled for f in futures)
    deadline = time.monotonic() + 5  # the stuck worker is ended from a thread
    while not client.ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.ran == [("_exit_process", [WORKERS[0]], False)]


def test_round_returns_every_result_when_all_ranks_finished():
    results = [RankResult(rank=i, worker=w, epochs_done=1) for i, w in enumerate(WORKERS)]
    futures = [FakeFuture("finished", result=r) for r in results]
    outcome = watch(futures, FakeRoundClient(WORKERS))
    assert (outcome.kind, outcome.results) == ("finished", results)


# -- waiting for workers -------------------------------------------------------------


class FakeClient:
    def __init__(self, workers=()):
        self.workers = {w: 1 for w in workers}

    def nthreads(self):
        return dict(self.workers)


def test_no_workers_fails_with_advice_after_the_wait():
    ctl = controller(None, FakeClient(), wait_for_workers=0.0)
    notices = []
    ctl.bus.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    with pytest.raises(TrainingError, match=r"no workers .*session.scale\(2\)"):
        ctl.workers.wait()
    assert notices and notices[0].level == "warning"


def test_workers_are_ranked_in_sorted_address_order():
    client = FakeClient(list(reversed(WORKERS)))
    assert controller(None, client).workers.wait() == WORKERS


# -- rank messages become events -----------------------------------------------------


def test_messages_from_ranks_become_events():
    ctl = controller(None)
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    for message in (
        BatchDone(generation=0, epoch=1, batch=3, n_batches=9, samples_per_s=1234.5),
        EpochDone(generation=0, epoch=1, row={"train_loss": 0.5}, world_size=2),
        RankUpdate(generation=0, rank=1, worker=WORKERS[1], state=RankPhase.TRAINING,
                   world_size=2),
        CheckpointDone(generation=0, epoch=1, step=0, url="file:///c/ckpt-000001-00000000.pt",
                       seconds=0.01, nbytes=1234),
    ):
        ctl.inbox((0.0, message.to_dict()))  # as Dask delivers them: (time, dict)
    ctl.inbox((0.0, {"kind": "something-new"}))  # a newer rank's kind: ignored
    ctl.inbox((0.0, {"kind": "batch", "epoch": 1}))  # malformed: logged and ignored
    assert [type(e) for e in events] == [BatchProgress, EpochEnded, RankStatus,
                                         CheckpointSaved]
    batch, epoch, rank, saved = events
    assert (batch.run_id, batch.batch, batch.n_batches) == ("test", 3, 9)
    assert (epoch.epoch, epoch.row, epoch.world_size) == (1, {"train_loss": 0.5}, 2)
    assert (rank.rank, rank.worker, rank.state) == (1, WORKERS[1], "training")
    assert type(rank.state) is str  # the public events keep plain values
    assert (saved.epoch, saved.nbytes) == (1, 1234)
    assert ctl.state is RunState.STARTING  # messages alone never move the fit


def recovered_after(messages, failure_noticed_before, failed_round=0):
    """Rank messages around a failure of round ``failed_round`` (restored from the end
    of epoch index 2, 9 steps an epoch), fed through the controller's real paths: the
    inbox, the failure handling, then the next round's rank 0 starting to train.
    Returns the Recovered event."""
    ctl = controller(None, FakeClient(WORKERS[:1]))
    events = running(ctl)
    ctl.generation = failed_round + 1
    ctl._newest = {"epoch": 2, "step": 0}
    for msg in messages[:failure_noticed_before]:
        ctl.inbox((0.0, msg))
    ctl._after_failure(failed_round_outcome())
    assert ctl.state is RunState.RECOVERING
    for msg in messages[failure_noticed_before:]:
        ctl.inbox((0.0, msg))
    ctl.inbox((0.0, RankUpdate(generation=failed_round + 1, rank=0, worker=WORKERS[0],
                               state=RankPhase.TRAINING, world_size=1).to_dict()))
    assert ctl.state is RunState.RUNNING
    # the controller reports the lost rank (the survivor reports itself)
    failed = [(e.rank, e.generation) for e in events
              if isinstance(e, RankStatus) and e.state == "failed"]
    assert (1, failed_round) in failed
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices == ["recovering: rank 1 lost on tcp://127.0.0.1:2000; restoring on 1 "
                       "worker(s)"]
    recovered = [e for e in events if isinstance(e, Recovered)]
    assert len(recovered) == 1 and recovered[0].world_size == 1
    return recovered[0]


def failed_round_outcome():
    return RoundOutcome(OutcomeKind.FAILED, failure=Failure("lost", rank=1, worker=WORKERS[1]),
                        failed_at=time.monotonic())


EPOCH_1_DONE = BatchDone(generation=0, epoch=1, batch=9, n_batches=9,
                         samples_per_s=1.0).to_dict()
SURVIVOR_FAILED = RankUpdate(generation=0, rank=0, worker=WORKERS[0], world_size=2,
                             state=RankPhase.FAILED, reached=Position(2, 5, 9)).to_dict()


@pytest.mark.parametrize("noticed", [2, 1], ids=["before", "after"])
def test_lost_steps_count_from_where_the_failed_ranks_got(noticed):
    # progress messages are throttled: the last one said "end of epoch 1", but the
    # survivor had done 5 steps of epoch 2 when the collective broke; the report of the
    # survivor may land before or after the controller notices the failure
    recovered = recovered_after([EPOCH_1_DONE, SURVIVOR_FAILED], noticed)
    assert (recovered.epoch, recovered.step, recovered.lost_steps) == (2, 0, 5)
    assert recovered.reason == "rank 1 lost on tcp://127.0.0.1:2000; restoring on 1 worker(s)"
    assert 0.0 <= recovered.downtime_s < 5.0


def test_a_late_failure_report_of_an_older_round_is_ignored():
    newer = dict(EPOCH_1_DONE, epoch=2, batch=1, generation=3)
    stale = dict(SURVIVOR_FAILED, generation=2)
    recovered = recovered_after([newer, stale], failure_noticed_before=2, failed_round=3)
    assert recovered.lost_steps == 1


def test_late_news_of_the_failed_round_does_not_end_the_recovery():
    """Only the next round training ends a recovery: progress that the failed round
    sent before it broke, arriving late, leaves the fit recovering."""
    ctl = controller(None, FakeClient(WORKERS[:1]))
    events = running(ctl)
    ctl._after_failure(failed_round_outcome())
    ctl.inbox((0.0, dict(EPOCH_1_DONE, generation=0)))
    ctl.inbox((0.0, RankUpdate(generation=0, rank=0, worker=WORKERS[0],
                               state=RankPhase.TRAINING, world_size=2).to_dict()))
    assert ctl.state is RunState.RECOVERING
    assert not [e for e in events if isinstance(e, Recovered)]
    ctl.inbox((0.0, dict(EPOCH_1_DONE, generation=1)))  # round 1's progress
    assert ctl.state is RunState.RUNNING
    assert len([e for e in events if isinstance(e, Recovered)]) == 1


def test_a_second_failure_before_the_next_round_trained_restarts_the_recovery():
    ctl = controller(None, FakeClient(WORKERS[:1]))
    events = running(ctl)
    ctl._after_failure(failed_round_outcome())
    first = ctl._recovery
    ctl.generation = 2  # round 1 failed too, before it trained
    ctl._after_failure(failed_round_outcome())
    assert ctl.state is RunState.RECOVERING and ctl._recovery.failed_at > first.failed_at
    assert ctl._recovery.generation == 2
    assert [e.generation for e in events if isinstance(e, RankStatus)] == [0, 1]
    assert ctl._budget.failures == 2  # no progress in between: both count
    ctl.inbox((0.0, RankUpdate(generation=2, rank=0, worker=WORKERS[0],
                               state=RankPhase.TRAINING, world_size=1).to_dict()))
    assert [type(e) for e in events if isinstance(e, Recovered)] == [Recovered]


# -- the fit's states -------------------------------------------------------------------


def test_a_fit_starts_in_starting_and_refuses_moves_it_cannot_make():
    ctl = controller(None)
    assert ctl.state is RunState.STARTING
    with pytest.raises(TransitionError, match="from starting to resizing"):
        ctl._enter(RunState.RESIZING)
    ctl._enter(RunState.RUNNING)
    ctl._enter(RunState.FINISHED)
    with pytest.raises(TransitionError, match="from finished to failed"):
        ctl._enter(RunState.FAILED)


def test_a_fit_that_never_started_publishes_no_run_finished():
    ctl = controller(None)
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    ctl._enter(RunState.FAILED, RunFinished(run_id="test", status="failed", epochs=0))
    assert ctl.state is RunState.FAILED and events == []


def test_a_fit_that_fails_before_it_starts_publishes_nothing():
    """fit() on something that is not a skorch net: refused in STARTING, no events."""
    ctl = TrainingController(FakeClient(WORKERS), MLP(), X, Y, bus=EventBus(), run_id="t")
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    with pytest.raises(UsageError, match="expected a skorch net"):
        ctl.fit()
    assert ctl.state is RunState.FAILED and events == []


def test_a_subscriber_that_waits_for_the_inbox_does_not_deadlock_the_fit():
    """Events are published outside the controller's lock: a subscriber that waits for
    Dask's event loop (where the inbox runs, and may need that lock) must not hang."""
    ctl = controller(None)
    finished = []

    def waits_for_the_inbox(event):
        inbox_thread = threading.Thread(target=ctl._on_alive, args=(0, 1))
        inbox_thread.start()
        inbox_thread.join(timeout=5.0)
        finished.append(not inbox_thread.is_alive())

    ctl.bus.subscribe(waits_for_the_inbox, replay=False)
    ctl._enter(RunState.RUNNING, RunStarted(run_id="test", max_epochs=1, batch_size=8,
                                            n_samples=40, world_size=1))
    assert finished == [True]


def test_starting_publishes_run_started_with_the_world_it_will_use():
    ctl = TrainingController(FakeClient(WORKERS), classifier(), X, Y, bus=EventBus(),
                             run_id="t", checkpoint=False, max_world=1,
                             config=TrainConfig())
    events = []
    ctl.bus.subscribe(events.append, replay=False)
    ctl.workers.in_process = lambda: False  # the fake client has no scheduler to ask
    ctl._start()
    assert ctl.state is RunState.RUNNING
    assert [type(e) for e in events] == [RunStarted]
    assert (events[0].world_size, events[0].max_epochs, events[0].n_samples) == (1, 2, 40)


def test_the_report_carries_peak_gpu_memory_only_for_gpu_runs():
    c = controller(classifier())
    c.results = [RankResult(rank=1, worker="b", epochs_done=1, peak_gpu_memory=3 << 30),
                 RankResult(rank=0, worker="a", epochs_done=1, peak_gpu_memory=2 << 30)]
    assert c.report().peak_gpu_memory == (2 << 30, 3 << 30)  # in rank order
    c.results = [RankResult(rank=0, worker="a", epochs_done=1)]
    assert c.report().peak_gpu_memory == ()


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"checkpoint": True}, "checkpoint: got True, expected a folder path or fsspec URL"),
    ({"checkpoint": 3}, "checkpoint: got 3"),
    ({"checkpoint": "  "}, "a non-empty folder path"),
    ({"resume": "yes"}, "resume: got 'yes', expected True or False"),
    ({"resume": 1}, "resume: got 1"),
    ({"max_world": -1}, "max_workers: got -1, expected an integer >= 1"),
    ({"max_world": 0}, "max_workers: got 0"),
    ({"max_world": 2.5}, "max_workers: got 2.5"),
    ({"max_world": True}, "max_workers: got True"),
])
def test_fit_arguments_are_validated_before_anything_happens(kwargs, says):
    from scalekit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        TrainingController(None, classifier(), X, Y, bus=EventBus(), **kwargs)
    assert says in str(info.value)


def test_a_path_object_is_a_checkpoint_folder(tmp_path):
    c = TrainingController(None, classifier(), X, Y, bus=EventBus(), checkpoint=tmp_path)
    assert c.checkpoints.requested == str(tmp_path)


# -- GPU placement through the controller ----------------------------------------------


class InventoryClient:
    """A scheduler whose workers report fixed GPUs (``client.run(worker_devices)``)."""

    def __init__(self, inventory):
        self.inventory = {w.worker: w for w in inventory}
        self.asked: list[list[str]] = []

    def run(self, function, workers, on_error="raise"):
        self.asked.append(list(workers))
        return {w: self.inventory[w] for w in workers if w in self.inventory}


def gpu_controller(inventory):
    from scalekit.training.devices import WorkerDevices  # noqa: F401

    c = TrainingController(InventoryClient(inventory), classifier(device="cuda"), X, Y,
                           bus=EventBus())
    c.workers.device_type, c.workers.backend = "cuda", "cpu:gloo,cuda:nccl"
    return c.workers


def one_gpu_host(*names):
    from scalekit.training.devices import GpuInfo, WorkerDevices

    gpu = GpuInfo("GPU-a", "NVIDIA H200")
    return [WorkerDevices(worker=n, host="h", gpus=(gpu,), nccl=True) for n in names]


def test_a_worker_that_would_share_the_gpu_sits_out_and_is_announced_once():
    from scalekit.events import Notice

    c = gpu_controller(one_gpu_host("a", "b"))
    notices = []
    c.bus.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None,
                    replay=False)
    assert c.placeable(["a", "b"]) == ["a"]
    assert c.placeable(["a", "b"]) == ["a"]
    assert len(notices) == 1 and "worker b would share" in notices[0].message
    assert c.gpu_index == {"a": 0} and c.devices_of(["a"]) == (0,)
    assert c.client.asked == [["a", "b"]]  # each worker asked once


def test_a_joining_worker_is_judged_beside_the_current_ranks():
    """Alone, b could take the GPU; beside a (which holds it) it cannot: otherwise the
    round would stop for b again and again."""
    c = gpu_controller(one_gpu_host("a", "b"))
    assert c.joinable(["a"], ["b"]) == []
    assert c.joinable([], ["b"]) == ["b"]


def test_placement_is_checked_before_a_cuda_fit_starts():
    from scalekit.errors import UsageError
    from scalekit.training.devices import WorkerDevices

    c = gpu_controller(one_gpu_host("a", "b"))
    with pytest.raises(UsageError, match="worker b would share NVIDIA H200"):
        c.check_placement(["a", "b"])
    c.check_placement(["a"])
    no_nccl = gpu_controller([WorkerDevices(worker="a", host="h",
                                            gpus=one_gpu_host("a")[0].gpus, nccl=False)])
    with pytest.raises(UsageError, match="NCCL is not available on worker"):
        no_nccl.check_placement(["a"])
    no_nccl.backend = "gloo"  # the documented fallback
    no_nccl.check_placement(["a"])


def test_a_cpu_net_asks_the_workers_nothing():
    c = TrainingController(InventoryClient([]), classifier(), X, Y, bus=EventBus())
    assert c.workers.placeable(["a", "b"]) == ["a", "b"]
    assert c.workers.devices_of(["a", "b"]) is None
    assert c.client.asked == []
