"""What callbacks learned survives a round: captured into the training state
(scalekit.training.callback_state), loadable without pickle, and put back by RoundControl
after on_train_begin reset it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, EarlyStopping, MlflowLogger, PassthroughScoring, PrintLog

from scalekit.training import callback_state
from scalekit.training.callback_router import CallbackRouter, RoundCallbacks
from scalekit.training.callback_rules import on_rank_zero
from scalekit.training.callbacks import RoundControl


class FakeNet:
    """As much of a skorch net as the callbacks' state needs."""

    def __init__(self, **callbacks):
        self.callbacks_ = list(callbacks.items())
        self.history = []


class Counter(Callback):
    """A custom callback with the state_dict protocol."""

    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen, "weights": torch.ones(2)}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def through_a_checkpoint(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_learned_state_round_trips_through_a_checkpoint_without_pickle():
    es = EarlyStopping(load_best=True)
    es.on_train_begin(None)
    vars(es).update(misses_=2, dynamic_threshold_=np.float64(0.5), best_epoch_=3,
                    best_model_weights_={"w": torch.arange(3.0)})
    best = PassthroughScoring("valid_loss").initialize()
    best.best_score_ = 0.25
    log = PrintLog().initialize()
    log.first_iteration_ = False
    counter = Counter()
    counter.seen = 7
    saved = through_a_checkpoint(callback_state.capture(FakeNet(es=es, best=best, log=log,
                                                                counter=counter)))
    fresh = {"es": EarlyStopping(load_best=True), "best": PassthroughScoring("valid_loss"),
             "log": PrintLog(), "counter": Counter()}
    fresh["es"].on_train_begin(None)  # what a new round does: reset
    restored = callback_state.restore(FakeNet(**fresh), saved)
    assert sorted(restored) == ["best", "counter", "es", "log"]
    es2 = fresh["es"]
    assert (es2.misses_, es2.dynamic_threshold_, es2.best_epoch_) == (2, 0.5, 3)
    assert torch.equal(es2.best_model_weights_["w"], torch.arange(3.0))
    assert fresh["best"].best_score_ == 0.25 and fresh["log"].first_iteration_ is False
    assert fresh["counter"].seen == 7


def test_a_state_dict_that_a_checkpoint_cannot_hold_is_refused_by_name():
    class Bad(Counter):
        def state_dict(self):
            return {"lock": object()}

    with pytest.raises(callback_state.CallbackStateError, match="callback 'bad' \\(Bad\\)"):
        callback_state.capture(FakeNet(bad=Bad()))


def test_json_safe_state_for_the_epoch_reports():
    ml = MlflowLogger(run=object(), client=object())
    ml._batch_count = 42
    vars(ml)["run_"] = object()  # objects are never captured
    counter = Counter()
    got = callback_state.capture(FakeNet(ml=ml, counter=counter), json_safe=True)
    assert got == {"ml": {"attrs": {"_batch_count": 42}}}  # Counter's tensor cannot travel


# -- RoundControl puts it back ------------------------------------------------------------


def test_round_control_restores_deciders_from_the_state_and_loggers_from_the_reports():
    es, log = EarlyStopping(), on_rank_zero(PrintLog().initialize())
    es.on_train_begin(None)
    net = FakeNet(es=es, log=log)
    state = {"callbacks": {"es": {"attrs": {"misses_": 2}},
                           "log": {"attrs": {"first_iteration_": True}}}}
    plan = RoundCallbacks(begun=True, reported=5,
                          logger_states={"log": {"attrs": {"first_iteration_": False}}})
    router = CallbackRouter(0, plan)
    control = RoundControl(0, lambda *a: None, state=state, router=router)
    control.on_train_begin(net)
    assert es.misses_ == 2  # from the checkpoint: consistent with the model
    assert log.first_iteration_ is False  # from the last report: no second header
    control.stopped = True
    assert router.resizing()  # the router learns that the round stops for a resize


def test_round_control_reports_the_loggers_state_with_each_epoch():
    log = PrintLog().initialize()
    log.first_iteration_ = False
    es = EarlyStopping()
    es.on_train_begin(None)
    net = FakeNet(es=es, log=log)
    net.history = [{"epoch": 1, "train_loss": 0.5, "batches": []}]
    sent = []
    RoundControl(0, lambda *a: sent.append(a), router=CallbackRouter(0))._report(net)
    assert sent == [(1, {"epoch": 1.0, "train_loss": 0.5},
                     {"log": {"attrs": {"first_iteration_": False}}})]
