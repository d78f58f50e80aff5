"""Fixtures: small datasets in a temporary folder (see datasets.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .datasets import make_arrays, write_parquet


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    return make_arrays()


@pytest.fixture
def parquet_folder(tmp_path: Path, arrays) -> Path:
    return write_parquet(tmp_path / "pq", *arrays)
