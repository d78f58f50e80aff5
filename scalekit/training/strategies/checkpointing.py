"""How a strategy's state moves: into a round, into checkpoints, back to the notebook.

Two ways, one mixin each; a strategy inherits one of them:

* :class:`PlainCheckpoints` -- every rank holds the whole model: rank 0 captures the
  full state and writes one ``.pt`` file, whenever a checkpoint is due (also mid-epoch,
  by its own clock).
* :class:`ShardedCheckpoints` -- each rank holds a shard: every rank writes its own
  shard of a DCP folder, at epoch ends only (a save is a collective, so all ranks must
  decide it together), and gathering the full state is a collective too. The optimizer
  is loaded only after :meth:`~.base.Strategy.prepare` rebuilt it over the shards.

Either can load a sharded checkpoint (DCP reshards on load, also into a plain module),
so a fit may resume under another strategy or world size.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from scalekit.training.checkpoint import CheckpointInfo, CheckpointStore
    from scalekit.training.strategies.base import Prepared


@dataclasses.dataclass(frozen=True)
class StateMeta:
    """What every captured state records about the run (see :mod:`..state`)."""

    world_size: int
    seed: int = 0
    run_id: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fields(self, *, epoch: int, step: int) -> dict[str, Any]:
        return {"epoch": epoch, "step": step, "world_size": self.world_size,
                "seed": self.seed, "run_id": self.run_id, "config": self.config}


class PlainCheckpoints:
    """The whole model on every rank: rank 0 saves and hands the state over."""

    sharded: ClassVar[bool] = False  # whether checkpoints are written one shard per rank
    # one writer decides alone, so it may also save by its own clock inside an epoch
    time_based_saves: ClassVar[bool] = True

    def restore(self, net: Any, state: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Before :meth:`prepare`: load ``state`` into the plain net; return the batches
        recorded so far in an unfinished epoch (``None`` at an epoch boundary)."""
        from scalekit.training import state as training_state

        return training_state.restore(net, state)

    def load(self, prepared: Prepared, state: dict[str, Any],
             store: CheckpointStore | None) -> None:
        """After :meth:`prepare`: load what :meth:`restore` could not (collective)."""
        if state.get("sharded"):  # a DCP checkpoint: only its metadata is in ``state``
            assert store is not None, "a sharded state comes from a checkpoint store"
            store.load_sharded(prepared.model, prepared.net.optimizer_, state["sharded"])

    def writes_checkpoints(self, rank: int) -> bool:
        return rank == 0

    def state_dict(self, prepared: Prepared, *, rank: int, epoch: int, step: int,
                   meta: StateMeta) -> dict[str, Any] | None:
        """The full training state (see :mod:`scalekit.training.state`) on rank 0,
        ``None`` elsewhere. Call it on every rank: for sharded strategies it gathers."""
        if rank != 0:
            return None
        from scalekit.training import state as training_state

        return training_state.capture(prepared.net, prepared.model,
                                      **meta.fields(epoch=epoch, step=step))

    def save(self, prepared: Prepared, store: CheckpointStore, *, rank: int, epoch: int,
             step: int, meta: StateMeta) -> CheckpointInfo | None:
        """Write and commit one checkpoint; the writer gets its info (else ``None``)."""
        state = self.state_dict(prepared, rank=rank, epoch=epoch, step=step, meta=meta)
        if state is None:
            return None
        return store.save(state, epoch=epoch, step=step)


class ShardedCheckpoints(PlainCheckpoints):
    """A shard per rank: every rank saves its shard; gathering is a collective."""

    sharded: ClassVar[bool] = True
    time_based_saves: ClassVar[bool] = False  # a save needs every rank: epoch ends only

    def restore(self, net: Any, state: dict[str, Any]) -> list[dict[str, Any]] | None:
        from scalekit.training import state as training_state

        # the optimizer is rebuilt over the shards by prepare(): loaded in load()
        return training_state.restore(net, state, optimizer=False)

    def load(self, prepared: Prepared, state: dict[str, Any],
             store: CheckpointStore | None) -> None:
        if state.get("sharded"):
            super().load(prepared, state, store)
            return
        from scalekit.training import state as training_state

        training_state.load_optimizer(prepared.model, prepared.net.optimizer_, state)

    def writes_checkpoints(self, rank: int) -> bool:
        return True

    def state_dict(self, prepared: Prepared, *, rank: int, epoch: int, step: int,
                   meta: StateMeta) -> dict[str, Any] | None:
        from scalekit.training import state as training_state

        # gathering a sharded model is a collective: every rank takes part
        captured = training_state.capture(prepared.net, prepared.model,
                                          **meta.fields(epoch=epoch, step=step))
        return captured if rank == 0 else None

    def save(self, prepared: Prepared, store: CheckpointStore, *, rank: int, epoch: int,
             step: int, meta: StateMeta) -> CheckpointInfo | None:
        from scalekit.training import state as training_state

        extra = training_state.capture_meta(prepared.net, **meta.fields(epoch=epoch, step=step))
        return store.save_sharded(prepared.model, prepared.net.optimizer_, extra, epoch=epoch,
                                  step=step, rank=rank)
