"""Models and callbacks for tests/integration/test_strategies.py and test_planner.py
(the data, digits, comes from training_models).

They live in an importable module (the workers unpickle the nets the tests send them,
which needs the classes importable by name).
"""

from __future__ import annotations

import os

import torch
from skorch.callbacks import Callback
from torch import nn
from training_models import WideMLP as ThreeLinear


class DigitsNet(ThreeLinear):
    """64 -> 128 -> 128 -> 10 logits (use CrossEntropyLoss): three Linear layers, so
    FSDP's default wrapping (each child with parameters) makes three shard units."""

    def __init__(self, n_in: int = 64, hidden: int = 128) -> None:
        super().__init__(n_in, hidden)


class WideMLP(nn.Module):
    """64 -> width x ``depth`` hidden layers -> 10 logits: a model whose parameters (and
    their gradients and optimizer state) dominate a rank's memory, while the activations
    of a small batch are tiny. Width 2048, depth 4: 12.7M parameters (51 MB) in four
    Linear layers, three of them 2048 x 2048."""

    def __init__(self, n_in: int = 64, width: int = 2048, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_in, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 10))
        self.seq = nn.Sequential(*layers)

    def forward(self, X):
        return self.seq(X)


class SaveRankParams(Callback):
    """After every training step each rank saves its module's parameters to
    ``folder/rank-<r>.pt`` (overwriting), so a test can see what every rank held after
    its last step, before the epoch-end averaging (the ranks of a LocalCluster share
    this machine's file system)."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        state = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        os.makedirs(self.folder, exist_ok=True)
        torch.save(state, os.path.join(self.folder, f"rank-{rank}.pt"))
