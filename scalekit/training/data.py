"""Batch-level reads from the data a skorch net trains on.

skorch's default DataLoader collates one sample at a time, which costs 15-20 % here;
reading a whole index array at once (``X[idx]``) is as fast as a raw torch loop. Generic
torch Datasets still work, through per-sample indexing and ``default_collate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BatchReader:
    """Read batches ``(Xi, yi)`` by index arrays from a dataset skorch produced.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset, torch.utils.data.Subset or torch Dataset
        What ``net.get_split_datasets`` returned.
    """

    def __init__(self, dataset: Any) -> None:
        from torch.utils.data import Subset

        self.dataset = dataset
        self._base = dataset
        self._map: np.ndarray | None = None
        while isinstance(self._base, Subset):  # ValidSplit returns Subsets
            idx = np.asarray(self._base.indices)
            self._map = idx if self._map is None else idx[self._map]
            self._base = self._base.dataset
        self._fast = _has_arrays(self._base)

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, idx: np.ndarray) -> tuple[Any, Any]:
        """The batch of samples at positions ``idx`` of the dataset."""
        if self._fast:
            base_idx = idx if self._map is None else self._map[idx]
            X = _take(self._base.X, base_idx)
            y = self._base.y
            if y is None:
                import torch

                return X, torch.full((len(base_idx),), float("nan"))
            return X, _take(y, base_idx)
        from torch.utils.data import default_collate

        samples = [self.dataset[int(i)] for i in idx]
        return default_collate(samples)


def _take(data: Any, idx: np.ndarray) -> Any:
    """``data[idx]`` for what :func:`_indexable` accepts, as one fancy-indexing call.

    skorch's ``multi_indexing`` turns an index array into a list and lets scikit-learn
    inspect every element, which costs about a tenth of a small model's step.
    """
    import torch

    if isinstance(data, np.ndarray):
        return data[idx]
    if isinstance(data, torch.Tensor):
        return data[torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(data.device)]
    if isinstance(data, dict):
        return {k: _take(v, idx) for k, v in data.items()}
    return type(data)(_take(v, idx) for v in data)


def _has_arrays(dataset: Any) -> bool:
    """True for a skorch Dataset whose X (and y) support fancy indexing."""
    try:
        from skorch.dataset import Dataset as SkorchDataset
    except ImportError:  # pragma: no cover - skorch is a dependency
        return False
    if type(dataset) is not SkorchDataset:  # subclasses may override __getitem__
        return False
    return _indexable(dataset.X) and (dataset.y is None or _indexable(dataset.y))


def _indexable(data: Any) -> bool:
    import torch

    if isinstance(data, (np.ndarray, torch.Tensor)):
        return True
    if isinstance(data, dict):
        return all(_indexable(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return all(_indexable(v) for v in data)
    return False  # pandas and the rest: skorch's own per-sample conversion
