"""The epoch's deal of shards to ranks (pure): balance, coverage, seeds, locality, and
continuing an epoch on another world size."""

from __future__ import annotations

import numpy as np
import pytest

from scalekit.data.deal import EpochPlan, deal, local_batch
from scalekit.data.sources import DataError

ROWS = (100, 80, 120, 60, 90, 50, 70)


def stream_rows(plan: EpochPlan, rank: int, start: int = 0, stop: int | None = None):
    """(shard, row) of each stream position a rank reads, in reading order."""
    stop = plan.rank_rows(rank) if stop is None else stop
    starts = plan.starts()
    out = []
    for a, b in plan.rank_ranges(rank, start, stop):
        for p in range(a, b):
            k = int(np.searchsorted(starts, p, side="right")) - 1
            out.append((plan.order[k], p - int(starts[k])))
    return out


def test_every_row_is_dealt_once_and_ranks_get_equal_shares():
    plan = deal(ROWS, 3, epoch=0, seed=1, local=10)
    sizes = [plan.rank_rows(r) for r in range(3)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == sum(ROWS)
    seen = [row for r in range(3) for row in stream_rows(plan, r)]
    assert len(seen) == len(set(seen)) == sum(ROWS)
    assert plan.steps() == min(sizes) // 10


def test_the_deal_is_seeded_per_epoch():
    a, b = deal(ROWS, 2, epoch=0, seed=1, local=8), deal(ROWS, 2, epoch=0, seed=1, local=8)
    assert a == b
    later = deal(ROWS, 2, epoch=1, seed=1, local=8)
    assert later.order != a.order  # another epoch, another deal of shards to ranks
    assert deal(ROWS, 2, epoch=0, seed=2, local=8).order != a.order
    assert sorted(later.order) == list(range(len(ROWS)))


def test_without_shuffle_the_stored_order_is_kept():
    plan = deal(ROWS, 2, epoch=5, seed=1, local=8, shuffle=False)
    assert plan.order == tuple(range(len(ROWS)))
    assert list(plan.window_permutation(0, 5)) == [0, 1, 2, 3, 4]


def test_windows_group_consecutive_shards_and_shuffle_inside():
    plan = deal(ROWS, 2, epoch=0, seed=1, local=8, window=3)
    windows = plan.windows()
    assert [len(w[2]) for w in windows] == [3, 3, 1]
    assert windows[-1][1] == sum(ROWS)
    perm = plan.window_permutation(0, 300)
    assert sorted(perm) == list(range(300)) and list(perm) != list(range(300))


def test_fewer_shards_than_ranks_share_a_shard_by_rows():
    plan = deal((90,), 3, epoch=0, seed=0, local=10)
    assert [plan.rank_rows(r) for r in range(3)] == [30, 30, 30]
    assert all(plan.shards_of(r) == [0] for r in range(3))  # each reads it, takes a third


def test_locality_gives_each_rank_the_shards_its_worker_holds():
    rows = (50,) * 6
    locality = (1, 0, 1, 0, 1, 0)  # shard i lives on rank locality[i]'s worker
    plan = deal(rows, 2, epoch=3, seed=0, local=10, locality=locality)
    for rank in (0, 1):
        own = {i for i, r in enumerate(locality) if r == rank}
        assert set(plan.shards_of(rank)) == own


def test_unheld_shards_go_to_the_ranks_with_least():
    rows = (50, 50, 50, 50)
    plan = deal(rows, 2, epoch=0, seed=0, local=10, locality=(0, 0, -1, -1))
    assert set(plan.shards_of(1)) == {2, 3}


def test_continuing_on_the_same_world_keeps_the_plan():
    plan = deal(ROWS, 2, epoch=0, seed=1, local=8)
    assert plan.continued(5, 2, 8) is plan


@pytest.mark.parametrize("old,new", [(3, 2), (2, 3), (3, 1), (2, 2)])
def test_continuing_on_another_world_deals_exactly_the_rows_not_trained_on(old, new):
    plan = deal(ROWS, old, epoch=2, seed=4, local=10)
    step = 7
    done = {row for r in range(old) for row in stream_rows(plan, r, 0, step * 10)}
    local = 10 if new != old else 12
    rest = plan.continued(step, new, local)
    assert rest.base_step == step and rest.world_size == new
    after = [row for r in range(new) for row in stream_rows(rest, r)]
    assert len(after) == len(set(after))
    assert set(after) | done == {row for r in range(old) for row in stream_rows(plan, r)}
    assert not set(after) & done
    sizes = [rest.rank_rows(r) for r in range(new)]
    assert max(sizes) - min(sizes) <= 1
    assert rest.total_steps() == step + min(sizes) // local


def test_a_plan_round_trips_through_a_checkpoint():
    plan = deal(ROWS, 3, epoch=2, seed=4, local=10, window=2).continued(4, 2, 15)
    state = plan.to_state()
    import json

    assert EpochPlan.from_state(json.loads(json.dumps(state)), ROWS) == plan


def test_a_checkpointed_plan_refuses_other_data():
    state = deal(ROWS, 2, epoch=0, seed=0, local=5).to_state()
    with pytest.raises(ValueError, match="rows"):
        EpochPlan.from_state(state, ROWS[:-1])


def test_validation_steps_cover_every_row():
    plan = deal((25, 26), 2, epoch=0, seed=0, local=10, shuffle=False)
    assert plan.steps(drop_last=False) == 3 and plan.steps() == 2


def test_local_batch_splits_the_global_batch():
    assert local_batch(64, 3) == 21
    with pytest.raises(DataError, match="smaller than the world"):
        local_batch(2, 3)
