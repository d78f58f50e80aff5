"""GPU tests: real CUDA training. They skip where torch sees no GPU (CI never has one);
``make test-gpu`` runs them, with the GPU benchmark, on a machine that has one."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
