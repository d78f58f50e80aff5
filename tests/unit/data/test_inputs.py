"""Sampling modes, the memory check before a sharded fit, and validation shards."""

from __future__ import annotations

import numpy as np
import pytest

import scalekit as sk
from scalekit.data import DataError
from scalekit.data.inputs import check_memory, resolve_sampling, window_bytes
from scalekit.data.sources import Shard, ShardedSource
from scalekit.data.split import split_shards, valid_fraction

from .datasets import FEATURES

MiB = 2**20


class Sized(ShardedSource):
    def __init__(self, sizes, window=1, prefetch=1):
        self.shards = tuple(Shard(rows=10, nbytes=s, ref=i) for i, s in enumerate(sizes))
        self.window, self.prefetch = window, prefetch


def test_in_memory_arrays_train_exact_and_sources_sharded(parquet_folder):
    X = np.zeros((4, 2), dtype=np.float32)
    assert resolve_sampling(X, None, None) == ("exact", X)
    source = sk.data.parquet(str(parquet_folder), features=FEATURES, target="label")
    assert resolve_sampling(source, None, None) == ("sharded", source)
    with pytest.raises(DataError, match="needs a sharded source"):
        resolve_sampling(X, None, "sharded")
    with pytest.raises(DataError, match="exact.*does not allow"):
        resolve_sampling(source, None, "exact")
    with pytest.raises(DataError, match="carries its labels"):
        resolve_sampling(source, np.zeros(4), None)
    with pytest.raises(DataError, match="sampling must be one of"):
        resolve_sampling(X, None, "random")


def test_dask_collections_are_sharded_unless_exact_is_asked():
    import dask.array as da

    X = da.zeros((40, 3), chunks=10)
    y = da.zeros(40, chunks=10)
    mode, source = resolve_sampling(X, y, None)
    assert mode == "sharded" and source.kind == "dask"
    assert resolve_sampling(X, y, "exact") == ("exact", X)
    with pytest.raises(DataError, match="both be Dask"):
        resolve_sampling(X, np.zeros(40), None)


def test_a_share_that_fits_passes():
    check_memory(Sized([10 * MiB] * 8), {"a": 1024 * MiB, "b": 0}, 2, holds_share=True,
                 model_bytes=MiB)


def test_a_share_that_does_not_fit_is_refused_with_the_numbers():
    source = Sized([100 * MiB] * 10)  # 1000 MiB held in worker memory (Dask partitions)
    with pytest.raises(DataError) as info:
        check_memory(source, {"tcp://a": 600 * MiB, "tcp://b": 2000 * MiB}, 2,
                     holds_share=True, model_bytes=4 * MiB)
    text = str(info.value)
    for part in ("tcp://a has a memory limit of 600 MiB", "its share of the data 500 MiB",
                 "1,000 MiB over 2 worker(s)", "read buffer of 2 window(s)", "200 MiB",
                 "model's state 4 MiB", "1 of 2 worker(s)", "add workers",
                 "Nothing was started"):
        assert part in text, (part, text)


def test_streamed_files_need_only_their_read_buffer():
    source = Sized([100 * MiB] * 10, window=2, prefetch=1)
    assert window_bytes(source) == 200 * MiB
    check_memory(source, {"a": 900 * MiB}, 1, holds_share=False, model_bytes=0)
    with pytest.raises(DataError, match="smaller shards"):
        check_memory(source, {"a": 700 * MiB}, 1, holds_share=False, model_bytes=0)


def test_validation_holds_out_whole_shards_by_seed():
    source = Sized([1] * 10)
    train, valid = split_shards(source, 0.2, seed=0)
    assert len(valid.shards) == 2 and len(train.shards) == 8
    assert set(train.indices).isdisjoint(valid.indices)
    assert split_shards(source, 0.2, seed=0)[1].indices == valid.indices
    with pytest.raises(DataError, match="at least 2"):
        split_shards(Sized([1]), 0.2, seed=0)


def test_the_valid_fraction_comes_from_skorchs_valid_split():
    from skorch.dataset import ValidSplit

    assert valid_fraction(None) is None
    assert valid_fraction(ValidSplit(5)) == 0.2
    assert valid_fraction(ValidSplit(0.1)) == 0.1
    with pytest.raises(DataError, match="cannot be split by"):
        valid_fraction(lambda ds, y: (ds, None))
