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

On a GPU, batches reach the device one step ahead (pinned memory, a side stream; or the
whole training set is kept on the GPU when it fits), losses stay on the device until the
epoch ends (no synchronisation per step), and mixed precision runs the forward pass and
the loss under ``torch.autocast`` (fp16 with a gradient scaler).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from scalekit.training.data import BatchReader, Prefetcher
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
    device: Any = None  # the rank's torch.device (None: the CPU)
    autocast: Any = None  # torch.autocast dtype (None: full precision)
    scaler: Any = None  # a GradScaler for fp16
    data_on_device: bool | str = "auto"  # keep the training set on the GPU: auto/True/False
    device_data: dict[int, Any] = dataclasses.field(default_factory=dict)  # its copies
    shards: Any = None  # a shard_feed.ShardFeed in the sharded mode (None: exact)
    router: Any = None  # a callback_router.CallbackRouter: which callbacks a hook reaches

    @property
    def on_gpu(self) -> bool:
        return self.device is not None and self.device.type == "cuda"


class EpochBatches:
    """skorch "iterator": yields ``(global_indices, rank_indices)`` for the current epoch."""

    def __init__(
        self, dataset: Any, *, batch_size: int, shuffle: bool, training: bool,
        net: DistributedNetMixin,
    ) -> None:
        self.reader = BatchReader(dataset)
        ctx = net._sk_ctx
        if training and ctx.on_gpu and ctx.data_on_device is not False:
            # the whole set on the GPU: auto when it takes at most a quarter of what is free
            share = None if ctx.data_on_device is True else 0.25
            self.reader.keep_on(ctx.device, ctx.device_data, share=share)
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
        if self._sk_ctx.shards is not None:  # sharded: batches from the epoch's deal
            return self._sk_ctx.shards.iterator(
                dataset, training=training, net=self, shuffle=bool(kwargs.get("shuffle")),
                batch_size=kwargs.get("batch_size", self.batch_size))
        return EpochBatches(
            dataset,
            batch_size=kwargs.get("batch_size", self.batch_size),
            shuffle=bool(kwargs.get("shuffle", False)),
            training=training,
            net=self,
        )

    # -- precision -------------------------------------------------------------------
    def _sk_autocast(self) -> Any:
        import contextlib

        ctx = self._sk_ctx
        if ctx.autocast is None:
            return contextlib.nullcontext()
        import torch

        device = ctx.device.type if ctx.device is not None else "cpu"
        return torch.autocast(device, dtype=ctx.autocast)

    def infer(self, x: Any, **fit_params: Any) -> Any:
        if self._sk_ctx.autocast is None:
            return super().infer(x, **fit_params)  # type: ignore[misc]
        with self._sk_autocast():
            y = super().infer(x, **fit_params)  # type: ignore[misc]
        # the loss, scoring (numpy has no bf16) and gathered predictions in float32
        return _to_float32(y)

    # -- loss ----------------------------------------------------------------------------
    _sk_loss: Any = None  # this rank's last training loss (a 0-dim tensor, unweighted)

    def get_loss(self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False) -> Any:
        loss = super().get_loss(y_pred, y_true, X=X, training=training)  # type: ignore[misc]
        if not training:
            return loss
        self.__dict__["_sk_loss"] = loss.detach()
        # DDP averages gradients over ranks; weighting each rank's mean loss by
        # (its share of the batch x world size) makes that average the global mean.
        if self._sk_weight != 1.0:
            loss = loss * self._sk_weight
        scaler = self._sk_ctx.scaler
        return scaler.scale(loss) if scaler is not None else loss

    # -- fp16: the optimizer steps through the gradient scaler ----------------------------
    def _step_optimizer(self, step_fn: Any) -> None:
        scaler = self._sk_ctx.scaler
        if scaler is None:
            return super()._step_optimizer(step_fn)  # type: ignore[misc]
        step_fn()  # GradScaler takes no closure: gradients first, then the step
        for name in self._optimizers:  # type: ignore[attr-defined]
            scaler.step(getattr(self, name + "_"))
        scaler.update()
        return None

    def notify(self, method_name: str, **cb_kwargs: Any) -> None:
        scaler = self._sk_ctx.scaler
        if method_name == "on_grad_computed" and scaler is not None:
            # clipping and gradient-reading callbacks see true gradients
            for name in self._optimizers:  # type: ignore[attr-defined]
                scaler.unscale_(getattr(self, name + "_"))
        router = self._sk_ctx.router
        if router is None:
            super().notify(method_name, **cb_kwargs)  # type: ignore[misc]
        else:  # side-effect callbacks on rank 0 only; one on_train_end per fit
            router.notify(self, method_name, cb_kwargs)

    # -- epochs --------------------------------------------------------------------------
    def run_single_epoch(
        self, iterator: EpochBatches | None, training: bool, prefix: str, step_fn: Any,
        **fit_params: Any,
    ) -> None:
        if iterator is None:
            return
        if training:
            self._sk_train_epoch(iterator, step_fn, **fit_params)
        elif getattr(iterator, "sharded", False):  # each rank its shards, gathered
            iterator.valid_epoch(self, **fit_params)
        else:
            self._sk_valid_epoch(iterator, **fit_params)

    def _sk_train_epoch(self, iterator: EpochBatches, step_fn: Any, **fit_params: Any) -> None:
        import torch.distributed as dist

        ctx = self._sk_ctx
        local_losses: list[Any] = []
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
        pieces = ((i, batch_idx, piece) for i, (batch_idx, piece) in enumerate(iterator)
                  if i >= skip)
        feed = Prefetcher(iterator.reader.read, ctx.device or "cpu")
        try:
            for (i, batch_idx, piece), batch in feed(pieces):
                self._sk_weight = par.loss_weight(len(piece), len(batch_idx), ctx.world_size)
                self.notify("on_batch_begin", batch=batch, training=True)
                self.__dict__["_sk_loss"] = None
                step = step_fn(batch, **fit_params)
                raw = self._sk_loss  # None when a custom step does not call get_loss
                if raw is None:
                    raw = step["loss"].detach().float() / self._sk_weight
                # on a GPU the loss stays there until the epoch ends: reading it now
                # would make the host wait for every step
                loss = raw if ctx.on_gpu else raw.item()
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
        sums = _loss_sums(local_losses, ctx.device)
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


def _to_float32(y: Any) -> Any:
    import torch

    if isinstance(y, torch.Tensor):
        return y.float() if y.dtype in (torch.bfloat16, torch.float16) else y
    if isinstance(y, (tuple, list)):
        return type(y)(_to_float32(v) for v in y)
    if isinstance(y, dict):
        return {k: _to_float32(v) for k, v in y.items()}
    return y


def _loss_sums(losses: list[Any], device: Any) -> Any:
    """The epoch's per-batch loss sums as one float64 tensor on the rank's device (one
    copy off a GPU, however many steps)."""
    import torch

    if losses and isinstance(losses[0], torch.Tensor):
        return torch.stack(losses).to(torch.float64)
    return torch.tensor(losses, dtype=torch.float64, device=device)


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
