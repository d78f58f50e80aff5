"""The model and data of the GPU tests (importable by the workers, which unpickle nets
that name these classes)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    """64 -> hidden -> hidden -> 10, logits (CrossEntropyLoss)."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, X):
        return self.seq(X)


def teacher_data(n: int = 40_000, n_test: int = 5_000, seed: int = 0):
    """Gaussian inputs labelled by a fixed random network (something to learn)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 64)) / 8
    w2 = rng.standard_normal((64, 10)) / 8
    X = rng.standard_normal((n + n_test, 64)).astype(np.float32)
    y = np.argmax(np.tanh(X @ w1) @ w2, axis=1).astype(np.int64)
    return X[:n], y[:n], X[n:], y[n:]


def make_net(device: str = "cuda", max_epochs: int = 4, **kwargs):
    from skorch import NeuralNetClassifier

    torch.manual_seed(0)
    params = {"criterion": nn.CrossEntropyLoss, "optimizer": torch.optim.SGD, "lr": 0.05,
              "optimizer__momentum": 0.9, "batch_size": 512, "max_epochs": max_epochs,
              "iterator_train__shuffle": True, "train_split": None, "verbose": 0,
              "device": device, **kwargs}
    return NeuralNetClassifier(MLP, **params)
