"""Adaptive scaling that knows about running fits.

Dask's own adaptive target counts queued work; a long-running training task looks like
one busy thread per worker, so a fit never asks for more workers (dask/distributed#3627),
and a scale-down may retire a worker in the middle of an epoch. Here a running fit
states its *demand* (the largest world that still helps it), the target never drops
below the current size while a fit runs, and a wanted shrink is handed to the fit,
which applies it at its next epoch boundary. The decision is the pure
:func:`adaptive_decision`; :class:`TrainingAwareAdaptive` (a local cluster) and
:class:`WorkerGroupAdaptive` (a Kubernetes worker group) only feed it, in the notebook's
process, from the :class:`~scalekit.backends.base.TrainingHooks` the backend was given.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Protocol

from distributed.deploy import Adaptive

from scalekit.backends.base import TrainingHooks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdaptiveDecision:
    target: int  # workers the cluster should have now
    shrink_to: int | None = None  # a smaller size to reach at the fit's next safe point
    reason: str = ""


def adaptive_decision(
    *, minimum: int, maximum: int, dask_target: int, demand: int | None, current: int
) -> AdaptiveDecision:
    """What adaptive scaling should do, from plain numbers.

    Parameters
    ----------
    minimum, maximum : int
        The user's adaptive bounds.
    dask_target : int
        What Dask's scheduler asks for (queued work).
    demand : int or None
        Workers a running fit can use (``None``: no fit running).
    current : int
        Workers planned now.
    """
    def clamp(n: int) -> int:
        return max(minimum, min(maximum, n))

    if demand is None:
        return AdaptiveDecision(clamp(dask_target), reason="no fit running")
    wanted = clamp(max(dask_target, demand))
    if wanted >= current:
        return AdaptiveDecision(wanted, reason=f"fit can use {demand}")
    # never retire a rank mid-epoch: keep the workers, let the fit shrink at a safe point
    return AdaptiveDecision(current, shrink_to=wanted,
                            reason=f"shrink to {wanted} at the fit's next epoch boundary")


class TrainingAwareAdaptive(Adaptive):
    """``distributed.Adaptive`` whose target comes from :func:`adaptive_decision`.

    Parameters
    ----------
    hooks : TrainingHooks, optional
        The running fits: their demand, and where a wanted shrink goes (default: none).
    *args, **kwargs
        For ``distributed.Adaptive`` (cluster, bounds, interval, wait_count).
    """

    def __init__(self, *args: Any, hooks: TrainingHooks | None = None, **kwargs: Any) -> None:
        self.hooks = hooks or TrainingHooks()
        self.last_decision: AdaptiveDecision | None = None
        super().__init__(*args, **kwargs)

    async def target(self) -> int:
        return self.decide(await super().target(), current=len(self.plan)).target

    def decide(self, dask_target: int, current: int) -> AdaptiveDecision:
        """:func:`adaptive_decision` on this adaptive's bounds and the fits' demand; a
        wanted shrink is handed to the fits (they apply it at their next epoch boundary)."""
        decision = adaptive_decision(
            minimum=int(self.minimum), maximum=int(self.maximum), dask_target=dask_target,
            demand=self.hooks.demand(), current=current,
        )
        if decision.shrink_to is not None:
            self.hooks.request_shrink(decision.shrink_to)
        self.last_decision = decision
        return decision


class ReplicaCluster(Protocol):
    """A cluster scaled by a replica count (the Dask operator's ``DaskWorkerGroup``)."""

    scheduler_comm: Any

    async def replicas(self) -> int:
        """The worker count the cluster is set to now."""

    async def set_replicas(self, n: int) -> None:
        """Set the worker count; the cluster picks the workers that go."""


class WorkerGroupAdaptive(TrainingAwareAdaptive):
    """Training-aware adaptive scaling for a :class:`ReplicaCluster` (Kubernetes).

    Dask's ``Adaptive`` scales a cluster that plans *named* workers and retires the ones
    it picks; ``KubeCluster`` plans none, and the operator picks the workers a smaller
    replica count removes (it asks the scheduler to retire the idlest). So each tick
    reads the replicas, decides with :func:`adaptive_decision` (Dask's target, the
    fits' demand) and sets them: up at once, down once ``wait_count`` ticks in a row
    wanted it. While a fit runs the decision never goes below the current count; a
    shrink goes to the fit and reaches the cluster through the backend's ``resize`` at
    the fit's epoch boundary.
    """

    cluster: ReplicaCluster

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.down_votes = 0
        super().__init__(*args, **kwargs)

    async def adapt(self) -> None:
        if self._adapting:  # a slow API call must not overlap the next tick
            return
        self._adapting = True
        try:
            current = await self.cluster.replicas()
            decision = self.decide(await Adaptive.target(self), current=current)
            self.down_votes = self.down_votes + 1 if decision.target < current else 0
            if decision.target == current or 0 < self.down_votes < self.wait_count:
                return
            if self.state == "stopped":  # stopped while we asked: a manual count rules
                return
            self.down_votes = 0
            self.log.append((time.time(), {"status": "up" if decision.target > current
                                           else "down", "n": decision.target}))
            logger.info("adaptive: %d -> %d workers (%s)", current, decision.target,
                        decision.reason)
            await self.cluster.set_replicas(decision.target)
        finally:
            self._adapting = False
