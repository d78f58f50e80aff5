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
        self._X = self._base.X if self._fast else None
        self._y = self._base.y if self._fast else None

    def keep_on(self, device: Any, cache: dict[int, Any], *, share: float | None) -> bool:
        """Read from a copy of the data on ``device`` (made once per ``cache``).

        ``share``: the copy is made only when it needs at most this share of the
        device's free memory (``None``: whatever it needs). Returns whether batches now
        come from the device.
        """
        if not self._fast:
            return False
        key = id(self._base)
        if key not in cache:
            cache[key] = None
            nbytes = _nbytes(self._base.X) + _nbytes(self._base.y)
            if share is None or nbytes <= share * _free_memory(device):
                X, y = self._base.X, self._base.y
                cache[key] = (to_device(X, device), None if y is None else to_device(y, device))
        if cache[key] is None:
            return False
        self._X, self._y = cache[key]
        return True

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, idx: np.ndarray) -> tuple[Any, Any]:
        """The batch of samples at positions ``idx`` of the dataset."""
        if self._fast:
            base_idx = idx if self._map is None else self._map[idx]
            X = _take(self._X, base_idx)
            y = self._y
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


def _nbytes(data: Any) -> int:
    if data is None:
        return 0
    if isinstance(data, dict):
        return sum(_nbytes(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(_nbytes(v) for v in data)
    if hasattr(data, "nbytes"):
        return int(data.nbytes)
    return int(data.numel() * data.element_size())


def _free_memory(device: Any) -> int:
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return int(torch.cuda.mem_get_info(device)[0])


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


# -- onto the device ---------------------------------------------------------------------


def to_device(data: Any, device: Any, *, pin: bool = False) -> Any:
    """``data`` (arrays, tensors, dicts and tuples of them) as tensors on ``device``.

    With ``pin`` the host copy goes through page-locked memory and the copy is
    asynchronous (``non_blocking``): the caller orders it with a stream (see
    :class:`Prefetcher`). What is not numeric stays as it is.
    """
    import torch

    if isinstance(data, dict):
        return {k: to_device(v, device, pin=pin) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(v, device, pin=pin) for v in data)
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biufc":
            return data  # strings, objects: skorch and the module deal with them
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        return data
    if data.device == torch.device(device):
        return data
    if pin and data.device.type == "cpu":
        data = data.pin_memory()
    return data.to(device, non_blocking=pin)


def _record(data: Any, stream: Any) -> None:
    import torch

    if isinstance(data, torch.Tensor):
        if data.is_cuda:
            data.record_stream(stream)
    elif isinstance(data, dict):
        for v in data.values():
            _record(v, stream)
    elif isinstance(data, (list, tuple)):
        for v in data:
            _record(v, stream)


class Prefetcher:
    """Batches onto a CUDA device one step ahead, off the compute stream.

    While step *i* computes, batch *i + 1* is read, pinned and copied on a side stream;
    the compute stream waits for that copy only when it needs the batch. On any other
    device the batches pass through unchanged (read when they are needed).

    Parameters
    ----------
    read : callable
        ``read(piece) -> batch`` on the host (:meth:`BatchReader.read`).
    device : torch.device or str
        Where the batches go.
    """

    def __init__(self, read: Any, device: Any) -> None:
        import torch

        self.read = read
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, pieces: Any) -> Any:
        """Yield ``(item, batch)`` for each ``item`` of ``pieces``, whose last element is
        the index array to read."""
        if self.stream is None:
            for item in pieces:
                yield item, self.read(item[-1])
            return
        import torch

        it = iter(pieces)
        ahead = self._load(next(it, None))
        while ahead is not None:
            item, batch = ahead
            ahead = self._load(next(it, None))  # the next copy runs during this step
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            _record(batch, current)  # its memory is not reused before compute is done
            yield item, batch

    def _load(self, item: Any) -> tuple[Any, Any] | None:
        if item is None:
            return None
        import torch

        batch = self.read(item[-1])
        with torch.cuda.stream(self.stream):
            return item, to_device(batch, self.device, pin=True)
