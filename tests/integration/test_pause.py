"""``sk.callbacks.PauseAt`` on a real two-worker LocalCluster: every rank of a fit stands
still at the chosen step, longer than the hang and stall timeouts, without being taken
for hung; released, the fit ends with the numbers of a fit without the pause."""

from __future__ import annotations

import time

import dask.config
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn
from training_models import WideMLP, digits_x4

import scalekit as sk
from scalekit.callbacks import Paused
from scalekit.config import TrainConfig
from scalekit.events import EpochEnded, Notice, Recovered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

X_TRAIN, _, Y_TRAIN, _ = digits_x4()
EPOCHS = 4
FIT_TIMEOUT = 240  # seconds a fit may take on a busy two-core machine


def make_net(callbacks=()):
    torch.manual_seed(0)  # the same initial weights for both fits
    return NeuralNetClassifier(
        WideMLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.05,
        optimizer__momentum=0.9, batch_size=64, max_epochs=EPOCHS,
        iterator_train__shuffle=True, train_split=None, verbose=0, callbacks=list(callbacks),
    )


@pytest.fixture
def session(tmp_path):
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "default-ckpt")}):
        s = sk.cluster(workers=2)
        try:
            s.wait_for_workers(2, timeout=120)
            yield s
        finally:
            s.close()


def test_a_paused_fit_stands_still_then_trains_as_if_never_paused(session):
    reference = sk.fit(make_net(), X_TRAIN, Y_TRAIN, cluster=session, show=False).net

    pause = sk.callbacks.PauseAt(epoch=2, batch=10)
    run = sk.fit(make_net([("pause", pause)]), X_TRAIN, Y_TRAIN, cluster=session,
                 wait=False, show=False)
    config = TrainConfig.from_config()
    try:
        paused = pause.wait_until_paused(timeout=FIT_TIMEOUT, run=run)
        assert paused == Paused(epoch=2, batch=10, world_size=2,
                                workers=tuple(sorted(session.client.nthreads())))
        # held past the hang and stall timeouts: nothing moves, nothing is called hung
        time.sleep(max(config.hang_timeout, config.stall_timeout) + 1.5)
        assert [e.epoch for e in run.events if isinstance(e, EpochEnded)] == [1]
        assert not run.done and pause.is_paused()
    finally:
        pause.release()
    net = run.wait(FIT_TIMEOUT)

    assert not [e for e in run.events if isinstance(e, Recovered)]
    assert not [e for e in run.events if isinstance(e, Notice) and e.level != "info"]
    assert not pause.is_paused()
    # it changed no number: the same losses, step for step
    assert net.history[:, "train_loss"] == reference.history[:, "train_loss"]
    assert net.history[-1, "batches"] == reference.history[-1, "batches"]
