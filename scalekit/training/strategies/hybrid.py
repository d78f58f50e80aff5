"""``hybrid``: shard inside groups of ``shard_size`` ranks, replicate across the groups
(a 2-D device mesh): fsdp's collectives stay inside a group, one all-reduce crosses
them. Exact."""

from __future__ import annotations

import dataclasses
from typing import Any

from scalekit.errors import UsageError
from scalekit.training.strategies import fsdp
from scalekit.training.strategies.base import Prepared, RankSetup, Strategy
from scalekit.training.strategies.checkpointing import ShardedCheckpoints


@dataclasses.dataclass(frozen=True)
class Hybrid(ShardedCheckpoints, Strategy):
    """Shard within groups of ``shard_size`` ranks, replicate across the groups.

    ``wrap`` chooses the shard units as for :class:`~.fsdp.FSDP`.
    """

    wrap: fsdp.Wrap = "children"
    shard_size: int = 2
    name = "hybrid"

    def __post_init__(self) -> None:
        fsdp.check_wrap(self.wrap)
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise UsageError(f"shard_size must be an integer >= 1, got {self.shard_size!r}")

    def prepare(self, net: Any, setup: RankSetup) -> Prepared:
        from torch.distributed.device_mesh import init_device_mesh

        fsdp.before_sharding()
        mesh = init_device_mesh(setup.device, hybrid_mesh_shape(setup.world_size,
                                                                self.shard_size),
                                mesh_dim_names=("replicate", "shard"))
        return fsdp.shard(self, net, mesh, self.wrap, setup)

    def state_shards(self, world_size: int) -> int:
        return hybrid_mesh_shape(world_size, self.shard_size)[1]

    def describe(self, world_size: int | None = None) -> str:
        text = super().describe()
        if world_size is None:
            return text
        replicas, shard = hybrid_mesh_shape(world_size, self.shard_size)
        return f"{text} on a {replicas} x {shard} mesh"


def hybrid_mesh_shape(world_size: int, shard_size: int) -> tuple[int, int]:
    """``(replicas, shard)`` for a world; the shard group shrinks to divide the world."""
    shard = max(1, min(shard_size, world_size))
    while world_size % shard:
        shard -= 1
    return world_size // shard, shard
