"""Training-aware adaptive scaling against a fake cluster and scheduler: the pure
``adaptive_decision`` decides, fed by the hooks the backend was built with."""

from __future__ import annotations

import asyncio

from scalekit.backends import TrainingHooks
from scalekit.backends.adaptive import TrainingAwareAdaptive


class Scheduler:
    def __init__(self, target: int) -> None:
        self.target = target

    async def adaptive_target(self, target_duration: float | None = None) -> int:
        return self.target


class Fits:
    def __init__(self, demand: int | None) -> None:
        self.demand, self.shrinks = demand, []

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(demand=lambda: self.demand, request_shrink=self.shrinks.append)


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
