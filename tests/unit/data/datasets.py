"""Small datasets written to a temporary folder, in the layouts the sources read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = [f"f{j}" for j in range(4)]


def make_arrays(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    X[:, 0] = np.arange(n)  # row ids, to check which rows a rank read
    return X, y


def write_parquet(folder: Path, X: np.ndarray, y: np.ndarray, files: int = 3,
                  row_groups: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for i, (xs, ys) in enumerate(zip(np.array_split(X, files), np.array_split(y, files),
                                     strict=True)):
        table = pa.table({**{c: xs[:, j] for j, c in enumerate(FEATURES)}, "label": ys})
        pq.write_table(table, folder / f"part-{i}.parquet",
                       row_group_size=-(-len(xs) // row_groups))
    return folder


