"""The batch order: disjoint, equal-step, world-size-independent pieces of global batches."""

from __future__ import annotations

import numpy as np
import pytest

from scalekit.training.sharding import (
    concat_pieces,
    epoch_order,
    global_batches,
    piece_sizes,
    rank_batches,
    rank_bounds,
    rank_piece,
    steps_per_epoch,
)

# (n samples, global batch size, world size)
CASES = [
    (100, 10, 1),
    (100, 10, 2),
    (100, 10, 3),
    (101, 10, 2),  # short last batch, odd piece
    (101, 10, 4),
    (7, 32, 2),  # one batch, smaller than batch_size
    (1437, 64, 2),  # load_digits' training split: last batch of 29
    (1437, 64, 3),
    (10, 1, 1),
    (10, 3, 3),
    (12, 5, 4),  # last batch of 2 < world size: some ranks get empty pieces
    (256, 256, 8),
]


def epoch(n, batch_size, rank, world_size, *, ep=0, seed=0, shuffle=True):
    return list(rank_batches(n, batch_size=batch_size, rank=rank, world_size=world_size,
                             epoch=ep, seed=seed, shuffle=shuffle))


@pytest.mark.parametrize(("n", "batch_size", "world_size"), CASES)
def test_pieces_are_disjoint_and_cover_each_global_batch(n, batch_size, world_size):
    per_rank = [epoch(n, batch_size, r, world_size) for r in range(world_size)]
    for step, steps in enumerate(zip(*per_rank, strict=True)):
        batch = steps[0][0]
        for global_idx, _ in steps:  # every rank agrees on the global batch
            np.testing.assert_array_equal(global_idx, batch)
        pieces = [piece for _, piece in steps]
        np.testing.assert_array_equal(concat_pieces(pieces), batch, err_msg=f"step {step}")
        assert sum(len(p) for p in pieces) == len(batch)
        assert len(set(np.concatenate(pieces).tolist())) == len(batch)  # disjoint
        sizes = [len(p) for p in pieces]
        assert sizes == piece_sizes(len(batch), world_size)
        assert max(sizes) - min(sizes) <= 1  # balanced
    # the epoch as a whole: every sample exactly once
    every = np.concatenate([piece for steps in per_rank for _, piece in steps])
    assert sorted(every.tolist()) == list(range(n))


@pytest.mark.parametrize(("n", "batch_size", "world_size"), CASES)
def test_every_rank_takes_the_same_number_of_steps(n, batch_size, world_size):
    counts = {len(epoch(n, batch_size, r, world_size)) for r in range(world_size)}
    assert counts == {steps_per_epoch(n, batch_size)}


@pytest.mark.parametrize(("n", "batch_size"), [(100, 10), (101, 10), (1437, 64), (12, 5)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_global_batches_do_not_depend_on_world_size(n, batch_size, shuffle):
    def batches(world_size):
        return [b.tolist() for b, _ in epoch(n, batch_size, 0, world_size, ep=3, seed=7,
                                            shuffle=shuffle)]

    reference = batches(1)
    for world_size in (2, 3, 4, 5):
        assert batches(world_size) == reference


@pytest.mark.parametrize(
    ("size", "world_size", "expected"),
    [
        (10, 1, [(0, 10)]),
        (10, 2, [(0, 5), (5, 10)]),
        (10, 3, [(0, 4), (4, 7), (7, 10)]),  # the first ranks take the remainder
        (11, 4, [(0, 3), (3, 6), (6, 9), (9, 11)]),
        (2, 4, [(0, 1), (1, 2), (2, 2), (2, 2)]),  # fewer samples than ranks
        (0, 3, [(0, 0), (0, 0), (0, 0)]),  # empty batch
        (1, 1, [(0, 1)]),
    ],
)
def test_rank_bounds(size, world_size, expected):
    assert [rank_bounds(size, r, world_size) for r in range(world_size)] == expected
    assert piece_sizes(size, world_size) == [b - a for a, b in expected]
    assert sum(piece_sizes(size, world_size)) == size


@pytest.mark.parametrize(("rank", "world_size"), [(-1, 2), (2, 2), (5, 2), (0, 0)])
def test_rank_bounds_rejects_a_rank_outside_the_world(rank, world_size):
    with pytest.raises(ValueError, match=f"rank {rank} is outside a world of {world_size}"):
        rank_bounds(10, rank, world_size)


def test_rank_piece_is_the_slice_of_the_batch():
    batch = np.array([9, 8, 7, 6, 5])
    assert [rank_piece(batch, r, 2).tolist() for r in range(2)] == [[9, 8, 7], [6, 5]]


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [(10, 3, [3, 3, 3, 1]), (9, 3, [3, 3, 3]), (2, 5, [2]), (0, 4, []), (5, 1, [1] * 5)],
)
def test_global_batches_cut_in_order_with_a_short_last_batch(n, batch_size, sizes):
    order = np.arange(n)[::-1]
    batches = global_batches(order, batch_size)
    assert [len(b) for b in batches] == sizes
    flat = np.concatenate(batches).tolist() if batches else []
    assert flat == order.tolist()
    assert len(batches) == steps_per_epoch(n, batch_size)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_global_batches_rejects_a_batch_size_below_one(batch_size):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        global_batches(np.arange(4), batch_size)


def test_epoch_order_is_a_permutation_seeded_by_seed_and_epoch():
    n = 500
    orders = {(seed, ep): epoch_order(n, ep, seed, shuffle=True)
              for seed in (0, 1) for ep in range(4)}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(n))
        assert order.tolist() != list(range(n))
    # reproducible: the same (seed, epoch) gives the same order, in any process
    for (seed, ep), order in orders.items():
        np.testing.assert_array_equal(epoch_order(n, ep, seed, shuffle=True), order)
    # reshuffled every epoch, and different for another seed
    as_lists = [o.tolist() for o in orders.values()]
    assert len({tuple(o) for o in as_lists}) == len(as_lists)


def test_shuffle_false_is_the_identity_in_every_epoch():
    for ep in range(3):
        np.testing.assert_array_equal(epoch_order(17, ep, 123, shuffle=False), np.arange(17))
    steps = epoch(10, 4, 1, 2, ep=5, seed=9, shuffle=False)
    assert [b.tolist() for b, _ in steps] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [p.tolist() for _, p in steps] == [[2, 3], [6, 7], [9]]


def test_concat_pieces_of_nothing_is_an_empty_index_array():
    empty = concat_pieces([])
    assert empty.shape == (0,)
    assert empty.dtype == np.int64
