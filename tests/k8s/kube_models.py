"""Models and data for the training tests on the emulated cluster.

Worker pods import this module by name (the test "image" has this folder on its path),
so the nets the tests pickle can be unpickled there.
"""

from __future__ import annotations

import os
import time

import numpy as np
from skorch.callbacks import Callback
from torch import nn


class DigitsMLP(nn.Module):
    """8x8 digit images in, class scores (logits) out."""

    def __init__(self, n_in: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, X):
        return self.seq(X)


def digits(copies: int = 1):
    """load_digits as float32 in [0, 1] and int64 labels (``copies`` times), split 75/25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = np.tile((X / 16.0).astype(np.float32), (copies, 1))
    y = np.tile(y.astype(np.int64), copies)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


class HoldWhileFileExists(Callback):
    """Keeps every rank still while ``path`` exists, so a test can act at a known point of
    a fit whatever the speed of the machine: at the end of each epoch, or with
    ``at_batch`` after that training step of each epoch; with ``world`` only in a world
    of that size. While holding it creates ``path + ".held"`` (pods share the disk)."""

    def __init__(self, path, at_batch=None, world=None):
        self.path, self.at_batch, self.world = str(path), at_batch, world

    def on_epoch_end(self, net, **kwargs):
        if self.at_batch is None:
            self._hold()

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.at_batch is not None:
            if len(net.history[-1]["batches"]) == self.at_batch:
                self._hold()

    def _hold(self):
        import torch.distributed as dist

        if self.world is not None and (
                not dist.is_initialized() or dist.get_world_size() != self.world):
            return
        if os.path.exists(self.path):
            open(self.path + ".held", "w").close()
        while os.path.exists(self.path):
            time.sleep(0.05)


class SlowEpochsWhileFileExists(Callback):
    """Sleeps ``seconds`` at the end of each epoch of a world of size ``world`` while
    ``path`` exists: short epochs that a test can still act between."""

    def __init__(self, path, seconds, world):
        self.path, self.seconds, self.world = str(path), seconds, world

    def on_epoch_end(self, net, **kwargs):
        import torch.distributed as dist

        if os.path.exists(self.path) and dist.is_initialized() and (
                dist.get_world_size() == self.world):
            time.sleep(self.seconds)


def detached_net_and_data(max_epochs=6):
    """A small digits fit for the detached-run test (importable by the pods)."""
    import torch
    from skorch import NeuralNetClassifier
    from torch import nn

    X_train, _, y_train, _ = digits(copies=1)
    torch.manual_seed(0)
    net = NeuralNetClassifier(DigitsMLP, criterion=nn.CrossEntropyLoss, lr=0.1,
                              optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                              batch_size=64, max_epochs=max_epochs, train_split=None,
                              verbose=0)
    return net, X_train, y_train
