"""Models and data for the training tests on the emulated cluster.

Worker pods import this module by name (the test "image" has this folder on its path),
so the nets the tests pickle can be unpickled there.
"""

from __future__ import annotations

import numpy as np
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
