"""Training-aware adaptive scaling of a worker group (Kubernetes), against a fake group
and scheduler: the same pure ``adaptive_decision`` as locally decides, the replicas
follow it (up at once, down after ``wait-count`` ticks), and while a fit runs a wanted
shrink goes to the fit, never to the replicas."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.backends import TrainingHooks
from scalekit.backends.adaptive import TrainingAwareAdaptive, WorkerGroupAdaptive


class Scheduler:
    def __init__(self, target: int) -> None:
        self.target = target

    async def adaptive_target(self, target_duration: float | None = None) -> int:
        return self.target


class Group:
    """A cluster scaled by a replica count, as the Dask operator's worker group is."""

    def __init__(self, replicas: int, dask_target: int) -> None:
        self.n = replicas
        self.scheduler_comm = Scheduler(dask_target)
        self.patches: list[int] = []

    async def replicas(self) -> int:
        return self.n

    async def set_replicas(self, n: int) -> None:
        self.patches.append(n)
        self.n = n


class Fits:
    def __init__(self, demand: int | None) -> None:
        self.demand, self.shrinks = demand, []

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(demand=lambda: self.demand, request_shrink=self.shrinks.append)


def adaptive(group: Group, fits: Fits, minimum: int = 1, maximum: int = 4,
             wait_count: int = 3) -> WorkerGroupAdaptive:
    # interval=0: no periodic callback, each tick is driven by the test
    return WorkerGroupAdaptive(group, hooks=fits.hooks(), minimum=minimum, maximum=maximum,
                               interval=0, wait_count=wait_count)


def ticks(a: WorkerGroupAdaptive, n: int) -> None:
    async def run() -> None:
        for _ in range(n):
            await a.adapt()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("replicas", "dask_target", "demand", "bounds", "tick", "patches", "shrinks"), [
        # a fit that can use 8 ranks on 1 worker: grow to the maximum at once
        (1, 1, 8, (1, 3), 1, [3], []),
        # no fit: the scheduler's target, within the bounds
        (1, 6, None, (1, 4), 1, [4], []),
        # a fit on 3 workers, bounds lowered to 1: the replicas stay, the fit is asked
        # to shrink at its next epoch boundary, at every tick until it has
        (3, 1, 8, (1, 1), 5, [], [1] * 5),
        # idle without a fit: down only once wait-count (3) ticks in a row wanted it
        (3, 0, None, (1, 4), 2, [], []),
        (3, 0, None, (1, 4), 3, [1], []),
        # steady: nothing to do
        (2, 2, None, (1, 4), 3, [], []),
    ])
def test_the_worker_group_follows_adaptive_decision(replicas, dask_target, demand, bounds,
                                                    tick, patches, shrinks):
    group, fits = Group(replicas, dask_target), Fits(demand)
    a = adaptive(group, fits, *bounds)
    ticks(a, tick)
    assert group.patches == patches
    assert fits.shrinks == shrinks
    assert a.last_decision is not None


def test_a_wish_to_scale_down_must_hold_for_wait_count_ticks_in_a_row():
    group = Group(3, dask_target=0)
    a = adaptive(group, Fits(None))
    ticks(a, 2)
    group.scheduler_comm.target = 3  # work came back: the count starts again
    ticks(a, 1)
    group.scheduler_comm.target = 0
    ticks(a, 2)
    assert group.patches == []
    ticks(a, 1)
    assert group.patches == [1]


def test_a_fit_starting_while_idle_workers_wait_to_go_keeps_them():
    group, fits = Group(3, dask_target=0), Fits(None)
    a = adaptive(group, fits, maximum=3)
    ticks(a, 2)
    fits.demand = 8  # a fit starts: it can use every worker
    ticks(a, 3)
    assert group.patches == [] and fits.shrinks == []


def test_a_stopped_adaptive_changes_nothing():
    group = Group(1, dask_target=4)
    a = adaptive(group, Fits(None))
    a.state = "stopped"  # as stop() leaves a running one, while a tick was under way
    ticks(a, 1)
    assert group.patches == []


class Planned:
    """A cluster that plans named workers, as a LocalCluster does."""

    def __init__(self, workers: int, dask_target: int) -> None:
        self.plan = {f"w{i}" for i in range(workers)}
        self.scheduler_comm = Scheduler(dask_target)


def test_a_local_clusters_adaptive_target_comes_from_the_same_decision():
    fits = Fits(8)
    a = TrainingAwareAdaptive(Planned(1, dask_target=1), hooks=fits.hooks(), minimum=1,
                              maximum=3, interval=0)
    assert asyncio.run(a.target()) == 3  # the fit's demand, within the bounds
    a.minimum = a.maximum = 1
    a.cluster.plan = {"w0", "w1", "w2"}
    assert asyncio.run(a.target()) == 3 and fits.shrinks == [1]  # kept: the fit shrinks
