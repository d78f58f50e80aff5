"""Which rows each rank trains on in sharded mode: the epoch's deal (pure functions).

An epoch's rows form one *stream*: the shards in a seeded order (``order``), grouped
into *windows* of ``window`` consecutive shards, each window's rows shuffled by a seed
of its own (the shuffle buffer). The stream is cut into ``W`` near-equal contiguous
*segments*, one per rank, so every rank gets ``N / W`` rows (up to one) and reads only
the windows its segment touches. Each step a rank takes the next ``local`` rows of its
segments; every rank takes ``steps = min(rows) // local`` steps (ranks must take equal
steps), so at most ``local`` rows a rank are left out of an epoch (others next epoch).

With *locality* (Dask partitions, which already live on workers) the order groups the
shards by the rank whose worker holds them, so a rank's segment is mostly its own
partitions.

A plan can *continue* on another world size mid-epoch (a recovery from a mid-epoch
checkpoint on fewer workers): the rows no rank consumed yet are cut again into the new
world's segments (:meth:`EpochPlan.continued`). At epoch boundaries every world size
gets a fresh deal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

Segment = tuple[int, int]  # [start, stop) positions in the epoch's stream


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch's deal.

    Attributes
    ----------
    epoch : int
        0-based epoch the plan belongs to.
    rows : tuple of int
        Rows of every shard of the source (by shard index).
    order : tuple of int
        Shard indices in stream order.
    window : int
        Shards per shuffle window.
    shuffle : bool
        Whether rows are shuffled inside each window.
    seed : int
    segments : tuple of tuple of Segment
        Per rank, the stream ranges it reads, in order.
    local : int
        Rows per rank per step.
    base_step : int
        Steps of the epoch taken before these segments began (> 0 for a continuation).
    """

    epoch: int
    rows: tuple[int, ...]
    order: tuple[int, ...]
    window: int
    shuffle: bool
    seed: int
    segments: tuple[tuple[Segment, ...], ...]
    local: int
    base_step: int = 0

    @property
    def world_size(self) -> int:
        return len(self.segments)

    def rank_rows(self, rank: int) -> int:
        return sum(b - a for a, b in self.segments[rank])

    def steps(self, *, drop_last: bool = True) -> int:
        """Steps of these segments (every rank the same): the shortest rank decides when
        training (``drop_last``); the longest when validating (short ranks then
        contribute smaller, possibly empty, pieces to the last batches)."""
        sizes = [self.rank_rows(r) for r in range(self.world_size)]
        if drop_last:
            return min(sizes) // self.local
        return -(-max(sizes) // self.local)

    def total_steps(self, *, drop_last: bool = True) -> int:
        """Steps of the whole epoch (those before a continuation included)."""
        return self.base_step + self.steps(drop_last=drop_last)

    # -- the stream ---------------------------------------------------------------------
    def starts(self) -> np.ndarray:
        """Stream position of each shard in ``order`` (and the total at the end)."""
        return np.concatenate([[0], np.cumsum([self.rows[i] for i in self.order])]).astype(
            np.int64)

    def windows(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """``(start, stop, shards)`` of each window of the stream."""
        starts = self.starts()
        out = []
        for w in range(0, len(self.order), self.window):
            last = min(w + self.window, len(self.order))
            out.append((int(starts[w]), int(starts[last]), self.order[w:last]))
        return out

    def window_permutation(self, index: int, size: int) -> np.ndarray:
        """The row order inside window ``index`` (identity without shuffle)."""
        if not self.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.seed, self.epoch, index, 7]).permutation(size)

    def rank_ranges(self, rank: int, start: int, stop: int) -> list[Segment]:
        """Stream ranges of rows ``[start, stop)`` of rank ``rank`` (counted along its
        segments)."""
        out: list[Segment] = []
        offset = 0
        for a, b in self.segments[rank]:
            n = b - a
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                out.append((a + lo, a + hi))
            offset += n
            if offset >= stop:
                break
        return out

    def shards_of(self, rank: int) -> list[int]:
        """Shards whose windows rank ``rank``'s segments touch, in reading order."""
        found: list[int] = []
        for start, stop, shards in self.windows():
            if any(a < stop and start < b for a, b in self.segments[rank]):
                found.extend(s for s in shards if s not in found)
        return found

    # -- continuing on another world ----------------------------------------------------
    def continued(self, step: int, world_size: int, local: int) -> EpochPlan:
        """The rest of this epoch after ``step`` steps, dealt to ``world_size`` ranks
        taking ``local`` rows a step (the same plan when nothing changed)."""
        if world_size == self.world_size and local == self.local:
            return self
        consumed = (step - self.base_step) * self.local
        rest: list[Segment] = []
        for rank in range(self.world_size):
            rest.extend(self.rank_ranges(rank, consumed, self.rank_rows(rank)))
        total = sum(b - a for a, b in rest)
        segments = tuple(
            tuple(_take_ranges(rest, *bounds(total, r, world_size))) for r in range(world_size)
        )
        return dataclasses.replace(self, segments=segments, local=local, base_step=step)

    # -- checkpoints --------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (without ``rows``: the source has them)."""
        return {"epoch": self.epoch, "order": list(self.order), "window": self.window,
                "shuffle": self.shuffle, "seed": self.seed, "local": self.local,
                "base_step": self.base_step,
                "segments": [[list(s) for s in rank] for rank in self.segments],
                "n_rows": int(sum(self.rows))}

    @classmethod
    def from_state(cls, state: dict[str, Any], rows: Sequence[int]) -> EpochPlan:
        """The plan ``to_state`` described, for a source of shards with ``rows``."""
        if int(state.get("n_rows", -1)) != int(sum(rows)):
            raise ValueError(
                f"the checkpoint's data position covers {state.get('n_rows')} rows but the "
                f"source has {sum(rows)}: resume with the data the fit was started with")
        return cls(epoch=int(state["epoch"]), rows=tuple(int(r) for r in rows),
                   order=tuple(int(i) for i in state["order"]), window=int(state["window"]),
                   shuffle=bool(state["shuffle"]), seed=int(state["seed"]),
                   segments=tuple(tuple((int(a), int(b)) for a, b in rank)
                                  for rank in state["segments"]),
                   local=int(state["local"]), base_step=int(state["base_step"]))


def bounds(size: int, rank: int, world_size: int) -> Segment:
    """``[start, stop)`` of rank ``rank``'s near-equal part of ``size`` rows."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _take_ranges(ranges: Sequence[Segment], start: int, stop: int) -> list[Segment]:
    """Positions ``[start, stop)`` of the concatenation of ``ranges``, as ranges."""
    out: list[Segment] = []
    offset = 0
    for a, b in ranges:
        n = b - a
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            out.append((a + lo, a + hi))
        offset += n
    return out


def local_batch(batch_size: int, world_size: int) -> int:
    """Rows per rank per step: the global ``batch_size`` split evenly (rounded down, so
    the global batch is ``world_size * local``)."""
    local = batch_size // world_size
    if local < 1:
        from scalekit.data.sources import DataError

        raise DataError(f"batch_size {batch_size} is smaller than the world of {world_size} "
                        "ranks: every rank needs at least one row a step")
    return local


def deal(rows: Sequence[int], world_size: int, *, epoch: int, seed: int, local: int,
         shuffle: bool = True, window: int = 1, locality: Sequence[int] | None = None
         ) -> EpochPlan:
    """The deal of ``epoch``: shards with ``rows`` rows each over ``world_size`` ranks.

    Parameters
    ----------
    rows : sequence of int
        Rows of each shard.
    world_size : int
    epoch, seed : int
        The order (and the shuffle inside windows) is seeded by ``(seed, epoch)``.
    local : int
        Rows per rank per step.
    shuffle : bool
        Permute the shards and the rows inside windows (training); ``False`` keeps the
        stored order (validation).
    window : int
        Shards per shuffle window (the shuffle buffer, in shards).
    locality : sequence of int, optional
        For each shard, the rank whose worker holds it (``-1``: none of them): the
        order then gives each rank its own shards first.
    """
    n = len(rows)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if window < 1:
        raise ValueError(f"window must be >= 1 shard, got {window}")
    permuted = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
                else np.arange(n))
    order = [int(i) for i in permuted]
    if locality is not None:
        order = _by_locality(order, rows, locality, world_size)
    total = int(sum(rows[i] for i in order))
    segments = tuple((bounds(total, r, world_size),) for r in range(world_size))
    return EpochPlan(epoch=epoch, rows=tuple(int(r) for r in rows), order=tuple(order),
                     window=window, shuffle=shuffle, seed=seed, segments=segments,
                     local=local)


def _by_locality(order: list[int], rows: Sequence[int], locality: Sequence[int],
                 world_size: int) -> list[int]:
    """``order`` regrouped rank by rank: each rank's own shards (in ``order``), the
    shards no rank holds going to the ranks with the fewest rows so far."""
    groups: list[list[int]] = [[] for _ in range(world_size)]
    held = [0] * world_size
    homeless = []
    for i in order:
        owner = locality[i]
        if 0 <= owner < world_size:
            groups[owner].append(i)
            held[owner] += rows[i]
        else:
            homeless.append(i)
    for i in homeless:
        owner = min(range(world_size), key=lambda r: held[r])
        groups[owner].append(i)
        held[owner] += rows[i]
    return [i for group in groups for i in group]
