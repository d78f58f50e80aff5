"""Where callbacks run (scalekit.training.callback_rules) and which hooks reach them on a
rank (callback_router), without a cluster: the router drives a real skorch net's hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import (
    BatchScoring,
    Callback,
    Checkpoint,
    EarlyStopping,
    EpochScoring,
    GradientNormClipping,
    InputShapeSetter,
    LoadInitState,
    LRScheduler,
    MlflowLogger,
    PassthroughScoring,
    PrintLog,
    ProgressBar,
    TensorBoard,
    TrainEndCheckpoint,
)
from torch import nn

from scalekit.errors import UsageError
from scalekit.training.callback_prep import check_picklable, prepare_in_notebook
from scalekit.training.callback_router import CallbackRouter, RoundCallbacks
from scalekit.training.callback_rules import (
    Where,
    on_every_rank,
    on_rank_zero,
    placement,
    placements,
)


@pytest.mark.parametrize(("callback", "where", "redo"), [
    (PrintLog(), Where.RANK_ZERO, False),
    (ProgressBar(), Where.RANK_ZERO, False),
    (TensorBoard(writer=None), Where.RANK_ZERO, False),
    (MlflowLogger(), Where.RANK_ZERO, False),
    (Checkpoint(), Where.RANK_ZERO, True),
    (TrainEndCheckpoint(), Where.RANK_ZERO, True),
    (LoadInitState(Checkpoint()), Where.NOTEBOOK, False),
    (InputShapeSetter(), Where.NOTEBOOK, False),
    (EarlyStopping(), Where.EVERY_RANK, False),
    (EpochScoring("accuracy"), Where.EVERY_RANK, False),
    (BatchScoring("accuracy"), Where.EVERY_RANK, False),
    (PassthroughScoring("valid_loss"), Where.EVERY_RANK, False),
    (LRScheduler(), Where.EVERY_RANK, False),
    (GradientNormClipping(), Where.EVERY_RANK, False),
    (Callback(), Where.EVERY_RANK, False),  # unknown: every rank, the safe default
])
def test_the_built_in_table(callback, where, redo):
    found = placement(callback)
    assert (found.where, found.redo_epochs) == (where, redo)


class MyPrintLog(PrintLog):
    pass


@on_rank_zero
class Notifier(Callback):
    pass


def test_subclasses_inherit_and_marks_win():
    assert placement(MyPrintLog()).where is Where.RANK_ZERO
    assert placement(MyPrintLog()).reason == "built-in: PrintLog"
    assert placement(Notifier()).where is Where.RANK_ZERO  # the class decorator
    marked = on_rank_zero(Callback())
    assert placement(marked).where is Where.RANK_ZERO and placement(marked).logger
    writer = on_rank_zero(Callback(), redo_epochs=True)
    assert placement(writer).redo_epochs and not placement(writer).logger
    assert placement(on_every_rank(PrintLog())).where is Where.EVERY_RANK
    assert placement(Callback()).where is Where.EVERY_RANK  # the class was not touched


# -- the router ----------------------------------------------------------------------


class Calls(Callback):
    """Records (hook, epoch) of each call, in memory."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, net, **kwargs):
        self.calls.append(("begin", len(net.history)))

    def on_epoch_end(self, net, **kwargs):
        self.calls.append(("epoch", len(net.history)))

    def on_train_end(self, net, **kwargs):
        self.calls.append(("end", len(net.history)))


def kinds():
    """A rank-0 logger, a rank-0 state writer and a callback of every rank."""
    return on_rank_zero(Calls()), on_rank_zero(Calls(), redo_epochs=True), Calls()


def make_net(**callbacks):
    torch.manual_seed(0)
    net = NeuralNetClassifier(nn.Linear, module__in_features=4, module__out_features=2,
                              max_epochs=1, train_split=None, verbose=1,
                              callbacks=list(callbacks.items()),
                              # skorch's scoring needs batches; these tests have none
                              callbacks__valid_acc=None, callbacks__train_loss=None,
                              callbacks__valid_loss=None)
    return net.initialize()


def drive(router, net, epochs, *, end=True):
    """skorch's hook sequence for ``epochs`` epochs, through ``router``."""
    router.notify(net, "on_train_begin", {"X": None, "y": None})
    for _ in range(epochs):
        router.notify(net, "on_epoch_begin", {})
        router.notify(net, "on_epoch_end", {})
    if end:
        router.notify(net, "on_train_end", {"X": None, "y": None})


def test_rank_one_runs_only_the_callbacks_that_decide_and_stays_quiet():
    logger, writer, decider = kinds()
    net = make_net(logger=logger, writer=writer, decider=decider)
    router = CallbackRouter(1)
    router.prepare(net, "tcp://w1")
    drive(router, net, 2)
    assert logger.calls == writer.calls == []
    assert decider.calls == [("begin", 0), ("epoch", 1), ("epoch", 2), ("end", 2)]
    assert net.verbose == 0  # skorch's own chatter (EarlyStopping's message) from rank 0 only


def test_after_a_recovery_loggers_skip_the_epochs_already_reported():
    logger, writer, decider = kinds()
    net = make_net(logger=logger, writer=writer, decider=decider)
    # the fit had reported epoch 3; the checkpoint it restores from is at epoch 2
    net.history.new_epoch()
    net.history.new_epoch()
    router = CallbackRouter(0, RoundCallbacks(begun=True, reported=3))
    drive(router, net, 2)
    assert logger.calls == [("epoch", 4), ("end", 4)]  # no second on_train_begin, no epoch 3
    assert writer.calls == [("begin", 2), ("epoch", 3), ("epoch", 4), ("end", 4)]
    assert decider.calls == writer.calls


def test_a_round_stopped_for_a_resize_does_not_end_the_fit():
    decider, logger = Calls(), on_rank_zero(Calls())
    net = make_net(decider=decider, logger=logger)
    router = CallbackRouter(0)
    router.resizing = lambda: True
    drive(router, net, 1)
    assert ("end", 1) not in decider.calls and ("end", 1) not in logger.calls
    assert router.calls("scalekit_round", object(), "on_train_end", 1)


def test_placements_of_a_net():
    net = make_net(cp=Checkpoint(dirname="unused"), es=EarlyStopping())
    found = placements(net)
    assert found["print_log"].where is Where.RANK_ZERO
    assert found["cp"].redo_epochs and found["es"].where is Where.EVERY_RANK


# -- the notebook's share ----------------------------------------------------------------


class HoldsALock(Callback):
    def __init__(self):
        import threading

        self.lock = threading.Lock()


def test_an_unpicklable_callback_is_named_with_its_attribute():
    with pytest.raises(UsageError) as info:
        check_picklable("locked", HoldsALock())
    message = str(info.value)
    assert "callback 'locked' (HoldsALock)" in message
    assert "attribute 'lock' (lock)" in message and "on_train_begin" in message


def test_load_init_state_and_input_shape_setter_run_once_in_the_notebook(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    saved = make_net()
    saved.set_params(module__in_features=6).initialize()
    saved.partial_fit(X, y)
    saved.save_params(f_params=tmp_path / "params.pt", f_history=tmp_path / "history.json")
    cp = Checkpoint(dirname=str(tmp_path), f_optimizer=None, f_criterion=None, event_name=None)
    net = make_net(shape=InputShapeSetter(param_name="in_features"), load=LoadInitState(cp))
    prepare_in_notebook(net, X, y)
    assert net.module_.in_features == 6  # the input size was set before the weights loaded
    assert torch.equal(net.module_.weight, saved.module_.weight)
    assert len(net.history) == 1 and dict(net.callbacks_)["load"].did_load_


def test_an_mlflow_logger_without_a_run_is_refused_in_the_notebook():
    net = make_net(ml=MlflowLogger(run=None, client=object()))
    vars(dict(net.callbacks_)["ml"])["run_"] = None  # no active run where it initialized
    with pytest.raises(UsageError, match="MlflowLogger.*no MLflow run"):
        prepare_in_notebook(net, None, None)
