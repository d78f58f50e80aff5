"""A rank's rows of one epoch, read window by window with a bounded read-ahead.

The rank's segments of the epoch's stream (:mod:`.deal`) touch a sequence of windows;
a background thread reads them in that order, at most ``prefetch`` windows ahead of the
one being trained on (a semaphore counts the windows held), so a rank holds ``1 +
prefetch`` windows at most while the next read overlaps compute. Each window is
shuffled once when it is read (the shuffle buffer) and the transformers of a
pipeline, if any, are applied to it there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scalekit.data.deal import EpochPlan

logger = logging.getLogger(__name__)

Progress = Callable[["StreamProgress"], None]


class StreamProgress:
    """Where a rank's stream stands (the panel's shards done/total)."""

    __slots__ = ("epoch", "shards_done", "shards_total", "rows_done", "rows_total",
                 "bytes_read", "buffered", "read_s")

    def __init__(self, epoch: int, shards_total: int, rows_total: int) -> None:
        self.epoch = epoch
        self.shards_done = 0
        self.shards_total = shards_total
        self.rows_done = 0
        self.rows_total = rows_total
        self.bytes_read = 0
        self.buffered = 0  # bytes of windows held (the current one and those read ahead)
        self.read_s = 0.0  # seconds the reader thread spent reading


class RankStream:
    """Rows ``[start, stop)`` of rank ``rank``'s part of ``plan``, as batches.

    Parameters
    ----------
    source : ShardedSource
    plan : EpochPlan
    rank : int
    start : int
        Rows of the rank's segments already consumed (a resumed epoch).
    transform : callable(X) -> X, optional
        Fitted transformers of a pipeline, applied to each window as it is read.
    on_progress : callable(StreamProgress), optional
        Called (in the training thread) whenever a window has been used up.
    """

    def __init__(self, source: Any, plan: EpochPlan, rank: int, *, start: int = 0,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 on_progress: Progress | None = None) -> None:
        self.source = source
        self.plan = plan
        self.rank = rank
        self.transform = transform
        self.on_progress = on_progress
        self.position = start  # rows of the rank's segments consumed
        total = plan.rank_rows(rank)
        ranges = plan.rank_ranges(rank, start, total)
        self._windows = plan.windows()
        self._sequence = _touched(self._windows, ranges)
        shards = plan.shards_of(rank)
        self.progress = StreamProgress(plan.epoch, len(shards), total)
        self.progress.rows_done = start
        skipped = _touched(self._windows, plan.rank_ranges(rank, 0, start))
        self._done_shards = {s for w in skipped if w not in self._sequence
                             for s in self._windows[w][2]}
        self.progress.shards_done = len(self._done_shards)
        self._queue: queue.Queue[tuple[int, Any] | None] = queue.Queue()
        self._slots = threading.Semaphore(1 + max(0, source.prefetch))
        self._stop = threading.Event()
        self._current: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self._thread = threading.Thread(target=self._read_ahead, name="scalekit-shards",
                                        daemon=True)
        self._thread.start()

    # -- the reader thread ----------------------------------------------------------------
    def _read_ahead(self) -> None:
        for w in self._sequence:
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            try:
                item: Any = self._load(w)
            except BaseException as exc:  # handed to the training thread, raised there
                item = exc
            self._queue.put((w, item))
            if isinstance(item, BaseException):
                return

    def _load(self, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        started = time.perf_counter()
        _, _, shards = self._windows[w]
        parts = [self.source.read(s) for s in shards]
        X = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        ys = [p[1] for p in parts]
        y = None if ys[0] is None else (ys[0] if len(ys) == 1 else np.concatenate(ys))
        if self.transform is not None:
            X = np.ascontiguousarray(self.transform(X), dtype=self.source.dtype)
        perm = self.plan.window_permutation(w, len(X))
        if self.plan.shuffle:
            X = X[perm]
            y = None if y is None else y[perm]
        nbytes = int(X.nbytes + (0 if y is None else y.nbytes))
        self.progress.bytes_read += nbytes
        self.progress.buffered += nbytes
        self.progress.read_s += time.perf_counter() - started
        return X, y

    # -- the training thread --------------------------------------------------------------
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``[start, stop)`` of the rank's segments (in order: each call starts where
        the last one stopped)."""
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for a, b in self.plan.rank_ranges(self.rank, start, stop):
            pos = a
            while pos < b:
                w, X, y = self._window_at(pos)
                w_start, w_stop, _ = self._windows[w]
                hi = min(b, w_stop)
                xs.append(X[pos - w_start:hi - w_start])
                if y is not None:
                    ys.append(y[pos - w_start:hi - w_start])
                pos = hi
                if hi == w_stop or hi == self._last_needed(w):
                    self._release(w)
        self.position = stop
        X = xs[0] if len(xs) == 1 else np.concatenate(xs) if xs else _empty(self)
        y = None if not ys else (ys[0] if len(ys) == 1 else np.concatenate(ys))
        return X, y

    def _window_at(self, pos: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        if self._current is not None:
            w = self._current[0]
            if self._windows[w][0] <= pos < self._windows[w][1]:
                return self._current
        w, item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if not self._windows[w][0] <= pos < self._windows[w][1]:
            raise RuntimeError(f"shard stream out of order: row {pos} is not in window {w}")
        self._current = (w, item[0], item[1])
        return self._current

    def _last_needed(self, w: int) -> int:
        """The last stream position of window ``w`` this rank needs (its segments may
        stop inside a window)."""
        w_start, w_stop, _ = self._windows[w]
        last = w_start
        for a, b in self.plan.segments[self.rank]:
            if a < w_stop and w_start < b:
                last = max(last, min(b, w_stop))
        return last

    def _release(self, w: int) -> None:
        if self._current is None or self._current[0] != w:
            return
        X, y = self._current[1], self._current[2]
        self.progress.buffered -= int(X.nbytes + (0 if y is None else y.nbytes))
        self._current = None
        self._slots.release()
        self._done_shards.update(self._windows[w][2])
        self.progress.shards_done = len(self._done_shards)
        self.progress.rows_done = self.position
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def close(self) -> None:
        """Stop reading ahead and drop what was read."""
        self._stop.set()
        self._current = None
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def _touched(windows: list[tuple[int, int, Any]], ranges: list[tuple[int, int]]) -> list[int]:
    """Windows the ranges touch, in reading order (consecutive repeats merged)."""
    out: list[int] = []
    starts = [w[0] for w in windows]
    for a, b in ranges:
        w = int(np.searchsorted(starts, a, side="right")) - 1
        while w < len(windows) and windows[w][0] < b:
            if not out or out[-1] != w:
                out.append(w)
            w += 1
    return out


def _empty(stream: RankStream) -> np.ndarray:
    return np.empty((0, stream.source.n_features), dtype=stream.source.dtype)
