"""How a rank parallelises the model: ``ddp``, ``fsdp``, ``hybrid`` or ``local_sgd``
(``sk.strategies``).

A strategy is a small picklable object (shipped to every rank) that carries its
behaviour behind one protocol (:class:`~.base.Strategy`): the rest of the runtime
(batches, loss weighting, history, checkpoints, elasticity) is the same for all of them.

* ``ddp`` -- ``DistributedDataParallel``: every rank holds the whole model, gradients
  are averaged each step. Exact: same steps as a single process. (On one rank the
  module trains as it is: there is nothing to average.)
* ``fsdp`` -- ``fully_shard`` (FSDP2): parameters, gradients and optimizer state are
  sharded across ranks, gathered layer by layer for compute. Exact like ``ddp``, with
  a fraction of the memory per rank.
* ``hybrid`` -- shard inside groups of ``shard_size`` ranks, replicate across groups
  (a 2-D device mesh). Exact.
* ``local_sgd`` -- ranks step on their own and average parameters every ``sync_every``
  steps (and before each validation). An approximation: fewer collectives, faster on
  slow links, at some cost in accuracy (measured here: -0.3 points at k=8).

A new strategy is one module with a frozen-dataclass subclass of
:class:`~.base.Strategy` and one line in the registry below.
"""

from __future__ import annotations

from typing import Any

from scalekit.training.strategies.base import (
    Prepared,
    RankSetup,
    Strategy,
    average_parameters,
    names,
    register,
    resolve,
    unregister,
)
from scalekit.training.strategies.checkpointing import StateMeta
from scalekit.training.strategies.ddp import DDP
from scalekit.training.strategies.fsdp import FSDP
from scalekit.training.strategies.hybrid import Hybrid, hybrid_mesh_shape
from scalekit.training.strategies.local_sgd import LocalSGD

# the registry: the names ``resolve`` (and ``sk.fit(strategy=...)``) knows, in order
register(DDP)
register(LocalSGD)
register(FSDP)
register(Hybrid)


def prepare(strategy: Strategy, net: Any, *, world_size: int, device_ids: list[int] | None,
            host_reduce: bool = False, timeout: float = 60.0, precision: str = "32"
            ) -> Prepared:
    """``strategy.prepare(net, RankSetup(...))``: apply ``strategy`` to the initialized
    skorch ``net`` on this rank (call :meth:`Prepared.close` when the round ends)."""
    return strategy.prepare(net, RankSetup(world_size=world_size, device_ids=device_ids,
                                           host_reduce=host_reduce, timeout=timeout,
                                           precision=precision))


__all__ = [
    "DDP", "FSDP", "Hybrid", "LocalSGD", "Prepared", "RankSetup", "StateMeta", "Strategy",
    "average_parameters", "hybrid_mesh_shape", "names", "prepare", "register", "resolve",
    "unregister",
]
