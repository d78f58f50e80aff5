"""The sharded mode on a rank: skorch's loop fed from the epoch's deal of shards.

:func:`fit_inputs` wraps ``net.partial_fit``: for a :class:`~scalekit.data.ShardedInput`
it gives skorch placeholder datasets, makes ``net.train_split`` return the held-out
shards, and puts a :class:`ShardFeed` in the rank's context, from which the
data-parallel net (:mod:`.dist_net`) takes its batch iterators. Each epoch rank 0 deals
(:func:`scalekit.data.deal.deal`; for Dask partitions by locality) and broadcasts the
plan, so every rank follows the same one; each rank streams its part
(:class:`scalekit.data.stream.RankStream`).

A mid-epoch checkpoint records the epoch's plan (:func:`data_position`); a round that
starts from it continues that plan, re-dealing the rows not yet trained on when the
world size changed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from scalekit.data.deal import EpochPlan, deal, local_batch
from scalekit.data.inputs import ShardedInput
from scalekit.data.stream import RankStream, StreamProgress


class _Rows:
    """A batch or piece as dist_net sees it: something with a length (and the rows of
    the rank's segments it covers)."""

    __slots__ = ("size", "start", "stop")

    def __init__(self, size: int, start: int = 0, stop: int = 0) -> None:
        self.size, self.start, self.stop = size, start, stop

    def __len__(self) -> int:
        return self.size


def _placeholder(source: Any) -> Any:
    from torch.utils.data import Dataset

    class ShardDataset(Dataset):
        """What skorch is given instead of arrays: the rows come from the feed."""

        def __len__(self) -> int:
            return source.n_rows

        def __getitem__(self, i: int) -> Any:
            raise TypeError("a sharded dataset is read by its feed, not sample by sample")

    return ShardDataset()


class ShardFeed:
    """One round's sharded data on one rank."""

    def __init__(self, data: ShardedInput, *, world_size: int, rank: int, seed: int,
                 state: dict[str, Any] | None, publish: Any = None,
                 progress_interval: float = 0.5) -> None:
        self.data = data
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.publish = publish
        self.progress_interval = progress_interval
        self.saved = None  # the plan of a checkpoint taken inside an epoch
        if state is not None and state.get("step", 0) > 0:
            found = state.get("data") or None
            if found and int(found.get("epoch", -1)) == int(state["epoch"]):
                self.saved = found["plan"]
        self.train_ds = _placeholder(data.train)
        self.valid_ds = _placeholder(data.valid) if data.valid is not None else None
        self.train_plan: EpochPlan | None = None
        self._workers: list[str] | None = None
        self._last_sent = 0.0

    def split(self, dataset: Any, y: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """``net.train_split`` on the rank: the training and held-out shards."""
        return self.train_ds, self.valid_ds

    def iterator(self, dataset: Any, *, training: bool, net: Any, batch_size: int,
                 shuffle: bool) -> ShardBatches:
        source = self.data.train if dataset is self.train_ds else self.data.valid
        if source is None:
            raise TypeError("a sharded fit trains on its own datasets only")
        return ShardBatches(self, source, training=training, net=net,
                            batch_size=batch_size, shuffle=shuffle)

    def plan(self, source: Any, *, epoch: int, training: bool, local: int, shuffle: bool,
             resume_step: int) -> EpochPlan:
        """The plan of ``epoch`` (a collective: rank 0 deals, every rank gets its plan)."""
        import torch.distributed as dist

        if self._workers is None:
            found: list[Any] = [None] * self.world_size
            dist.all_gather_object(found, _worker_address())
            self._workers = [str(w) for w in found]
        plan = None
        if self.rank == 0:
            if training and self.saved is not None and resume_step \
                    and int(self.saved["epoch"]) == epoch:
                plan = EpochPlan.from_state(self.saved, source.rows).continued(
                    resume_step, self.world_size, local)
            else:
                locality = (source.locality(self._workers) if source.kind == "dask"
                            else None)
                plan = deal(source.rows, self.world_size, epoch=epoch, seed=self.seed,
                            local=local, shuffle=training and shuffle, window=source.window,
                            locality=locality)
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
        if training:
            self.train_plan = plan
            self.saved = None
        return plan

    def position(self) -> dict[str, Any] | None:
        """Where the current epoch's deal stands, for a checkpoint."""
        if self.train_plan is None:
            return None
        return {"epoch": self.train_plan.epoch, "plan": self.train_plan.to_state()}

    def progress(self, progress: StreamProgress, training: bool, *, final: bool = False
                 ) -> None:
        """Tell the notebook (throttled) how far this rank's stream got."""
        if self.publish is None or not training:
            return
        now = time.monotonic()
        if not final and now - self._last_sent < self.progress_interval:
            return
        self._last_sent = now
        self.publish.data(progress)


class ShardBatches:
    """A skorch "iterator" over one rank's part of each epoch's plan: yields
    ``(global batch, this rank's piece)`` with the lengths dist_net weighs losses by;
    :meth:`read` turns a piece into arrays."""

    sharded = True

    def __init__(self, feed: ShardFeed, source: Any, *, training: bool, net: Any,
                 batch_size: int, shuffle: bool) -> None:
        self.feed = feed
        self.source = source
        self.training = training
        self.net = net
        self.shuffle = shuffle
        world = feed.world_size
        size = source.n_rows if batch_size == -1 else int(batch_size)
        self.local = local_batch(size, world) if training else max(1, -(-size // world))
        self.reader = self  # dist_net reads through ``iterator.reader.read``
        self._epoch: int | None = None
        self._plan: EpochPlan | None = None
        self._stream: RankStream | None = None

    def _prepare(self) -> EpochPlan:
        epoch = max(len(self.net.history) - 1, 0)
        if self._plan is None or self._epoch != epoch:
            if not self.training and self._plan is not None:
                self._epoch = epoch  # the same validation deal every epoch
                return self._plan
            ctx = self.net._sk_ctx
            resume = ctx.resume_step if self.training and ctx.resume_epoch == epoch else 0
            self._plan = self.feed.plan(self.source, epoch=epoch, training=self.training,
                                        local=self.local, shuffle=self.shuffle,
                                        resume_step=resume)
            self._epoch = epoch
        return self._plan

    def __len__(self) -> int:
        return self._prepare().total_steps(drop_last=self.training)

    def __iter__(self) -> Iterator[tuple[_Rows, _Rows]]:
        plan = self._prepare()
        local = plan.local
        rows = [plan.rank_rows(r) for r in range(plan.world_size)]
        finished = False
        try:
            for i in range(plan.total_steps(drop_last=self.training)):
                j = i - plan.base_step
                if j < 0:  # taken before a continuation: dist_net skips these
                    yield _Rows(local * plan.world_size), _Rows(local)
                    continue
                start = j * local
                sizes = [max(0, min(local, n - start)) for n in rows]
                yield _Rows(sum(sizes)), _Rows(sizes[self.feed.rank], start,
                                              start + sizes[self.feed.rank])
            finished = True
        finally:
            self._close(finished)

    def piece_sizes(self, piece: _Rows) -> list[int]:
        """Every rank's piece size at the step of ``piece`` (validation gathers them)."""
        plan = self._plan
        assert plan is not None
        return [max(0, min(plan.local, plan.rank_rows(r) - piece.start))
                for r in range(plan.world_size)]

    def read(self, piece: _Rows) -> tuple[Any, Any]:
        """The rows of ``piece`` as ``(X, y)``."""
        if self._stream is None:
            plan = self._plan
            assert plan is not None
            transform = self.feed.data.transform
            self._stream = RankStream(
                self.source, plan, self.feed.rank, start=piece.start,
                transform=None if transform is None else transform.transform,
                on_progress=lambda p: self.feed.progress(p, self.training))
        X, y = self._stream.read(piece.start, piece.stop)
        if y is None:
            import torch

            y = torch.full((len(X),), float("nan"))
        return X, y

    def _close(self, finished: bool = False) -> None:
        if self._stream is not None:
            progress = self._stream.progress
            if finished:  # rows past the last full step wait for another epoch's deal
                progress.shards_done, progress.rows_done = progress.shards_total, \
                    self._stream.position
            self.feed.progress(progress, self.training, final=True)
            self._stream.close()
            self._stream = None

    # -- validation: every rank its pieces, predictions and labels gathered ------------------
    def valid_epoch(self, net: Any, **fit_params: Any) -> None:
        import torch

        count = 0
        net._sk_par.before_eval()
        for whole, piece in self:
            Xi, yi = self.read(piece)
            sizes = self.piece_sizes(piece)
            net.notify("on_batch_begin", batch=(Xi, yi), training=False)
            with torch.no_grad():
                local = net.evaluation_step((Xi, yi), training=False)
                y_pred = gather_rows(local, sizes)
                y_true = gather_rows(torch.as_tensor(np.asarray(yi)).to(_device(local)),
                                     sizes)
                loss = net.get_loss(y_pred, y_true, X=Xi, training=False)
            net.history.record_batch("valid_loss", loss.item())
            net.history.record_batch("valid_batch_size", len(whole))
            net.notify("on_batch_end", batch=(Xi, y_true), training=False, loss=loss,
                       y_pred=y_pred)
            count += 1
        net.history.record("valid_batch_count", count)


def _device(t: Any) -> Any:
    if isinstance(t, (tuple, list)):
        return _device(t[0])
    return t.device


def gather_rows(local: Any, sizes: list[int]) -> Any:
    """All-gather each rank's rows (``sizes[r]`` of them on rank ``r``) in rank order."""
    import torch
    import torch.distributed as dist

    if isinstance(local, (tuple, list)):
        return type(local)(gather_rows(t, sizes) for t in local)
    longest = max(sizes)
    padded = local
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        padded = torch.cat([local, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


@contextlib.contextmanager
def fit_inputs(net: Any, ctx: Any, X: Any, y: Any, *, world_size: int, rank: int, seed: int,
               state: dict[str, Any] | None, publish: Any = None,
               progress_interval: float = 0.5) -> Iterator[tuple[Any, Any]]:
    """What ``net.partial_fit`` is given on a rank: ``(X, y)`` unchanged on the exact
    path; for sharded data, placeholders fed by a :class:`ShardFeed` (in ``ctx``)."""
    if not isinstance(X, ShardedInput):
        yield X, y
        return
    feed = ShardFeed(X, world_size=world_size, rank=rank, seed=seed, state=state,
                     publish=publish, progress_interval=progress_interval)
    ctx.shards = feed
    split = net.train_split
    net.train_split = feed.split if X.valid is not None else None
    try:
        yield feed.train_ds, None
    finally:
        net.train_split = split
        ctx.shards = None
        for source in (X.train, X.valid):
            if source is not None:
                source.forget()


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:  # not in a Dask task (a test driving one rank)
        return ""


def data_position(net: Any) -> dict[str, Any] | None:
    """The sharded feed's position for a checkpoint (``None`` on the exact path)."""
    ctx = net.__dict__.get("_sk_ctx")
    feed = getattr(ctx, "shards", None)
    return feed.position() if feed is not None else None
