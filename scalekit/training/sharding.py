"""Which samples each rank sees: a batch order that does not depend on world size.

Every epoch has one permutation of the samples, seeded by ``(seed, epoch)``. It is cut
into *global* batches of ``batch_size``; rank ``r`` of ``W`` takes the ``r``-th of ``W``
near-equal contiguous pieces of each global batch. So every rank takes the same number
of steps (no collective deadlock), the shards are disjoint, and -- because data-parallel
gradients are averaged over the global batch -- the optimisation follows the same
sequence of global batches at any world size. That is what makes a resize exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order of ``n`` samples in ``epoch`` (identical on every rank)."""
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n)


def global_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut an epoch's order into consecutive global batches (the last may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def rank_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s piece of a batch of ``size`` samples."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_piece(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous piece of one global batch."""
    start, stop = rank_bounds(len(batch), rank, world_size)
    return batch[start:stop]


def piece_sizes(size: int, world_size: int) -> list[int]:
    """Sizes of all ranks' pieces of a batch of ``size`` (sums to ``size``)."""
    return [b - a for a, b in (rank_bounds(size, r, world_size) for r in range(world_size))]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of optimizer steps in one epoch (the same on every rank)."""
    return -(-n // batch_size)


def rank_batches(
    n: int, *, batch_size: int, rank: int, world_size: int, epoch: int, seed: int,
    shuffle: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(global_batch_indices, this_rank_indices)`` for one epoch."""
    for batch in global_batches(epoch_order(n, epoch, seed, shuffle), batch_size):
        yield batch, rank_piece(batch, rank, world_size)


def concat_pieces(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of splitting one batch into rank pieces (rank order restores batch order)."""
    return np.concatenate(list(pieces)) if pieces else np.empty(0, dtype=np.int64)
