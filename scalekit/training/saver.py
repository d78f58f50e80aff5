"""The checkpoint schedule on a rank: every n epochs and/or every m seconds.

Which ranks write and how (one ``.pt`` by rank 0, or a DCP shard by every rank) is the
strategy's business (:mod:`.strategies.checkpointing`); this module only decides when.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit.training.strategies import StateMeta

if TYPE_CHECKING:
    from scalekit.training.publisher import Publisher
    from scalekit.training.rank import RankSpec
    from scalekit.training.strategies import Prepared


class Saver:
    """Saves ``prepared``'s checkpoints when they are due and reports each commit."""

    def __init__(self, spec: RankSpec, prepared: Prepared, rank: int,
                 publish: Publisher) -> None:
        self.spec = spec
        self.prepared = prepared
        self.rank = rank
        self.publish = publish
        self.meta = StateMeta(world_size=spec.world_size, seed=spec.seed, run_id=spec.run_id,
                              config=spec.run_config)
        self.last = time.monotonic()

    @classmethod
    def for_rank(cls, spec: RankSpec, prepared: Prepared, rank: int,
                 publish: Publisher) -> Saver | None:
        """A saver when this rank writes checkpoints of this round, else ``None``."""
        if spec.checkpoint is None or not prepared.strategy.writes_checkpoints(rank):
            return None
        return cls(spec, prepared, rank, publish)

    def mid_epoch_hook(self) -> Callable[[Any, int, int], None] | None:
        """What to call after each step, when saves may fall inside an epoch: only
        where one writer decides by its own clock (the others would not take part)."""
        if self.spec.checkpoint_seconds > 0 and self.prepared.strategy.time_based_saves:
            return self.maybe_mid_epoch
        return None

    def at_epoch_end(self, net: Any, epoch: int) -> None:
        every = self.spec.checkpoint_epochs
        due_by_epoch = every > 0 and (epoch % every == 0 or epoch == self.spec.max_epochs)
        by_time = self.prepared.strategy.time_based_saves and self._due_by_time()
        if due_by_epoch or by_time:
            self._save(epoch, 0)

    def maybe_mid_epoch(self, net: Any, epoch: int, step: int) -> None:
        if self._due_by_time():
            self._save(epoch, step)

    def _due_by_time(self) -> bool:
        every = self.spec.checkpoint_seconds
        return every > 0 and time.monotonic() - self.last >= every

    def _save(self, epoch: int, step: int) -> None:
        strategy = self.prepared.strategy
        info = strategy.save(self.prepared, self.spec.checkpoint, rank=self.rank, epoch=epoch,
                             step=step, meta=self.meta)
        self.last = time.monotonic()
        if info is not None:
            self.publish.checkpoint(info)
