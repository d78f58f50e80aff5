"""Datasets written as parquet for the sharded-data integration tests (an importable
module: the workers unpickle what the tests send them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = [f"f{j}" for j in range(64)]


def write_parquet(folder, X, y, *, files=6, row_groups=2, fs=None):
    """``X``/``y`` as ``files`` parquet files of ``row_groups`` row groups each, under
    ``folder`` (a local path, or a path on the fsspec filesystem ``fs``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fs is None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for i, (xs, ys) in enumerate(zip(np.array_split(X, files), np.array_split(y, files),
                                     strict=True)):
        table = pa.table({**{f"f{j}": xs[:, j] for j in range(X.shape[1])}, "label": ys})
        path = f"{folder}/part-{i:03d}.parquet"
        size = -(-len(xs) // row_groups)
        if fs is None:
            pq.write_table(table, path, row_group_size=size)
        else:
            with fs.open(path, "wb") as f:
                pq.write_table(table, f, row_group_size=size)
    return str(folder)


def wide_data(rows, features, seed=0):
    """Random rows whose label is a linear function of them (4 classes)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    w = np.random.default_rng(99).normal(size=(features, 4)).astype(np.float32)
    y = (X @ w).argmax(axis=1).astype(np.int64)
    return X, y
