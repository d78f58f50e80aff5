"""The data-parallel behaviour mixed into the user's skorch net on each rank.

skorch's own fit loop, callbacks and history run unchanged on every rank; this mixin
changes four things:

* batches come from :mod:`scalekit.training.sharding` (global batch = ``batch_size``,
  each rank gets its piece; read a batch at a time, not a sample at a time);
* training forwards go through the strategy's module (``DistributedDataParallel``, an
  FSDP2-sharded module, ...; see :mod:`.strategies`), with the loss weighted so that
  the averaged gradient is exactly the global batch's mean gradient;
* per-batch training losses are made global with one all-reduce per epoch, before the
  ``on_epoch_end`` callbacks read them;
* validation is sharded too, and each batch's predictions are all-gathered, so loss and
  scoring callbacks see the full validation set on every rank -- their values are exact
  and identical everywhere, and decisions such as early stopping agree across ranks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from scalekit.training.data import BatchReader
from scalekit.training.sharding import epoch_order, global_batches, rank_piece


@dataclasses.dataclass
class RankContext:
    """What one rank knows about its world."""

    rank: int
    world_size: int
    seed: int = 0
    on_batch: Callable[[int, int, int, int], None] | None = None  # epoch, batch, of, samples
    on_step: Callable[[Any, int, int], None] | None = None  # net, epoch, steps done
    # resuming inside an epoch: skip its first `resume_step` steps, keep their records
    resume_epoch: int | None = None
    resume_step: int = 0
    resume_batches: list[dict[str, Any]] | None = None
    step: int = 0  # steps taken by this rank in this round (for the liveness beacon)


class EpochBatches:
    """skorch "iterator": yields ``(global_indices, rank_indices)`` for the current epoch."""

    def __init__(
        self, dataset: Any, *, batch_size: int, shuffle: bool, training: bool,
        net: DistributedNetMixin,
    ) -> None:
        self.reader = BatchReader(dataset)
        self.batch_size = len(self.reader) if batch_size == -1 else int(batch_size)
        self.shuffle = shuffle
        self.training = training
        self.net = net

    def __len__(self) -> int:
        return -(-len(self.reader) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ctx = self.net._sk_ctx
        epoch = max(len(self.net.history) - 1, 0)
        order = epoch_order(len(self.reader), epoch, ctx.seed, self.shuffle)
        for batch in global_batches(order, self.batch_size):
            if self.training and len(batch) < ctx.world_size:
                # a global batch smaller than the world would leave a rank without data;
                # every rank drops it alike (at most world_size - 1 samples an epoch)
                continue
            yield batch, rank_piece(batch, ctx.rank, ctx.world_size)


class DistributedNetMixin:
    """Mixed in front of the user's net class on a rank (see :func:`make_distributed`)."""

    _sk_ctx: RankContext
    _sk_par: Any  # scalekit.training.strategies.Prepared
    _sk_weight: float = 1.0

    # -- data --------------------------------------------------------------------------
    def get_iterator(self, dataset: Any, training: bool = False) -> EpochBatches:
        kwargs = self.get_params_for("iterator_train" if training else "iterator_valid")
        return EpochBatches(
            dataset,
            batch_size=kwargs.get("batch_size", self.batch_size),
            shuffle=bool(kwargs.get("shuffle", False)),
            training=training,
            net=self,
        )

    # -- loss ----------------------------------------------------------------------------
    def get_loss(self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False) -> Any:
        loss = super().get_loss(y_pred, y_true, X=X, training=training)  # type: ignore[misc]
        # DDP averages gradients over ranks; weighting each rank's mean loss by
        # (its share of the batch x world size) makes that average the global mean.
        return loss * self._sk_weight if training and self._sk_weight != 1.0 else loss

    # -- epochs --------------------------------------------------------------------------
    def run_single_epoch(
        self, iterator: EpochBatches | None, training: bool, prefix: str, step_fn: Any,
        **fit_params: Any,
    ) -> None:
        if iterator is None:
            return
        if training:
            self._sk_train_epoch(iterator, step_fn, **fit_params)
        else:
            self._sk_valid_epoch(iterator, **fit_params)

    def _sk_train_epoch(self, iterator: EpochBatches, step_fn: Any, **fit_params: Any) -> None:
        import torch
        import torch.distributed as dist

        ctx = self._sk_ctx
        local_losses: list[float] = []
        sizes: list[tuple[int, int]] = []
        epoch = len(self.history) - 1
        n_batches = len(iterator)
        started = time.perf_counter()
        seen = 0
        skip = 0
        if ctx.resume_epoch == epoch and ctx.resume_step:
            # continue an epoch that a checkpoint or a resize interrupted
            skip = ctx.resume_step
            self.history[-1]["batches"].extend(dict(b) for b in ctx.resume_batches or ())
            ctx.resume_epoch, ctx.resume_step, ctx.resume_batches = None, 0, None
        par = self._sk_par
        self.module_ = par.train_module
        try:
            for i, (batch_idx, piece) in enumerate(iterator):
                if i < skip:
                    continue
                batch = iterator.reader.read(piece)
                self._sk_weight = par.loss_weight(len(piece), len(batch_idx), ctx.world_size)
                self.notify("on_batch_begin", batch=batch, training=True)
                step = step_fn(batch, **fit_params)
                loss = step["loss"].item() / self._sk_weight
                self.history.record_batch("train_loss", loss)
                self.history.record_batch("train_batch_size", len(piece))
                self.notify("on_batch_end", batch=batch, training=True, **step)
                local_losses.append(loss * len(piece))
                sizes.append((len(piece), len(batch_idx)))
                seen += len(batch_idx)
                par.after_step()
                ctx.step += 1
                if ctx.on_batch is not None:
                    ctx.on_batch(epoch, i + 1, n_batches, seen)
                if ctx.on_step is not None:
                    ctx.on_step(self, epoch, i + 1)
        finally:
            self.module_ = par.eval_module
            self._sk_weight = 1.0
        # one collective an epoch turns the recorded losses into global-batch losses
        sums = torch.tensor(local_losses, dtype=torch.float64)
        dist.all_reduce(sums)
        batches = self.history[-1]["batches"][skip:]
        for record, total, (_, global_size) in zip(batches, sums.tolist(), sizes, strict=True):
            record["train_loss"] = total / global_size
            record["train_batch_size"] = global_size
        self.history.record("train_batch_count", skip + len(sizes))
        self.history.record("train_samples_per_s", seen / max(time.perf_counter() - started, 1e-9))

    def _sk_valid_epoch(self, iterator: EpochBatches, **fit_params: Any) -> None:
        import torch

        ctx = self._sk_ctx
        count = 0
        self._sk_par.before_eval()
        for batch_idx, piece in iterator:
            batch = iterator.reader.read(batch_idx)
            self.notify("on_batch_begin", batch=batch, training=False)
            with torch.no_grad():
                if len(batch_idx) < ctx.world_size:  # too small to share: all compute it
                    y_pred = self.evaluation_step(batch, training=False)
                else:
                    local = self.evaluation_step(iterator.reader.read(piece), training=False)
                    y_pred = _gather_pieces(local, len(batch_idx), ctx.world_size)
                _, y_true = batch
                loss = self.get_loss(y_pred, y_true, X=batch[0], training=False)
            self.history.record_batch("valid_loss", loss.item())
            self.history.record_batch("valid_batch_size", len(batch_idx))
            self.notify("on_batch_end", batch=batch, training=False, loss=loss, y_pred=y_pred)
            count += 1
        self.history.record("valid_batch_count", count)


def _gather_pieces(local: Any, size: int, world_size: int) -> Any:
    """All-gather each rank's piece of a batch's predictions into the whole batch."""
    import torch

    if isinstance(local, (tuple, list)):
        return type(local)(_gather_pieces(t, size, world_size) for t in local)
    import torch.distributed as dist

    from scalekit.training.sharding import piece_sizes

    sizes = piece_sizes(size, world_size)
    longest = max(sizes)
    padded = local
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        padded = torch.cat([local, pad])
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def make_distributed(net: Any, ctx: RankContext, prepared: Any) -> Any:
    """Turn an initialized skorch ``net`` into this rank's data-parallel net, in place."""
    base = type(net)
    cls = type(f"Distributed{base.__name__}", (DistributedNetMixin, base), {})
    net.__class__ = cls
    # plain attributes: skorch's __setattr__ refuses modules set outside initialize()
    net.__dict__["_sk_ctx"] = ctx
    net.__dict__["_sk_par"] = prepared
    return net


def undo_distributed(net: Any) -> Any:
    """Restore the plain class after a round (the module stays unwrapped)."""
    if isinstance(net, DistributedNetMixin):
        net.__class__ = type(net).__mro__[2]
        for attr in ("_sk_ctx", "_sk_par"):
            net.__dict__.pop(attr, None)
    return net
