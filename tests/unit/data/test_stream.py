"""A rank's stream: the rows its deal gives it, window by window, with a bounded
read-ahead in a background thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import scalekit as sk
from scalekit.data.deal import deal
from scalekit.data.sources import Shard, ShardedSource
from scalekit.data.stream import RankStream

from .datasets import FEATURES


class Counted(ShardedSource):
    """Shards of row ids, recording which were read and how many are held at once."""

    def __init__(self, rows, window=1, prefetch=1):
        self.shards = tuple(Shard(rows=r, nbytes=r * 8, ref=i) for i, r in enumerate(rows))
        self.offsets = np.concatenate([[0], np.cumsum(rows)])
        self.n_features, self.window, self.prefetch = 1, window, prefetch
        self.reads: list[int] = []
        self.gate = threading.Semaphore(1000)

    def read(self, index):
        self.gate.acquire()
        self.reads.append(index)
        ids = np.arange(self.offsets[index], self.offsets[index + 1])
        return ids.astype(np.float32)[:, None], ids.astype(np.int64)


def consume(stream, plan, rank, local, start=0):
    rows = []
    for i in range(start, plan.rank_rows(rank) // local):
        X, y = stream.read(i * local, (i + 1) * local)
        np.testing.assert_array_equal(X[:, 0].astype(np.int64), y)
        rows.extend(y.tolist())
    return rows


@pytest.mark.parametrize("window", [1, 2])
def test_ranks_read_disjoint_rows_that_together_cover_the_epoch(window):
    source = Counted((40, 30, 50, 20), window=window)
    plan = deal(source.rows, 2, epoch=1, seed=3, local=10, window=window)
    seen = []
    for rank in range(2):
        stream = RankStream(source, plan, rank)
        seen += consume(stream, plan, rank, 10)
        stream.close()
    assert len(seen) == len(set(seen)) == 140
    assert seen != sorted(seen)  # shuffled


def test_a_rank_reads_only_the_shards_its_segment_touches():
    source = Counted((50,) * 6)
    plan = deal(source.rows, 3, epoch=0, seed=0, local=10)
    stream = RankStream(source, plan, 1)
    consume(stream, plan, 1, 10)
    stream.close()
    assert sorted(source.reads) == sorted(plan.shards_of(1)) and len(source.reads) == 2


def test_read_ahead_is_bounded():
    source = Counted((10,) * 8, prefetch=1)
    plan = deal(source.rows, 1, epoch=0, seed=0, local=5)
    stream = RankStream(source, plan, 0)
    stream.read(0, 5)
    deadline = 50
    while len(source.reads) < 2 and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    threading.Event().wait(0.1)
    assert len(source.reads) == 2  # the current window and one ahead, no more
    assert stream.progress.buffered == 2 * 10 * (4 + 8)
    stream.read(5, 10)  # the first window is used up: one more may be read
    threading.Event().wait(0.1)
    assert len(source.reads) == 3 and stream.progress.shards_done == 1
    stream.close()


def test_a_resumed_stream_starts_at_its_offset_and_skips_what_was_read():
    source = Counted((30, 30, 30))
    plan = deal(source.rows, 1, epoch=0, seed=0, local=10)
    whole = RankStream(source, plan, 0)
    rows = consume(whole, plan, 0, 10)
    whole.close()
    source.reads.clear()
    later = RankStream(source, plan, 0, start=40)
    assert consume(later, plan, 0, 10, start=4) == rows[40:]
    later.close()
    assert len(source.reads) == 2 and later.progress.shards_done == 3


def test_a_read_error_reaches_the_training_thread():
    class Broken(Counted):
        def read(self, index):
            raise OSError("disk gone")

    source = Broken((10, 10))
    plan = deal(source.rows, 1, epoch=0, seed=0, local=5)
    stream = RankStream(source, plan, 0)
    with pytest.raises(OSError, match="disk gone"):
        stream.read(0, 5)
    stream.close()


def test_progress_reports_shards_as_they_are_used_up():
    source = Counted((10, 10, 10))
    plan = deal(source.rows, 1, epoch=0, seed=0, local=10)
    reports = []
    stream = RankStream(source, plan, 0, on_progress=lambda p: reports.append(p.shards_done))
    consume(stream, plan, 0, 10)
    stream.close()
    assert reports == [1, 2, 3] and stream.progress.shards_total == 3


def test_a_transform_is_applied_to_each_window(parquet_folder):
    source = sk.data.parquet(str(parquet_folder), features=FEATURES, target="label")
    plan = deal(source.rows, 1, epoch=0, seed=0, local=20, shuffle=False)
    stream = RankStream(source, plan, 0, transform=lambda X: X * 0 + 1)
    X, _ = stream.read(0, 20)
    stream.close()
    assert X.dtype == np.float32 and (X == 1).all()
