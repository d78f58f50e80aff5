"""The skorch callback the runtime adds (last) on each rank: report, checkpoint, stop."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from skorch.callbacks import Callback

if TYPE_CHECKING:
    from scalekit.training.callback_router import CallbackRouter


class RoundStopped(KeyboardInterrupt):
    """Ends ``partial_fit`` at an epoch boundary (skorch stops cleanly on it)."""


class RoundControl(Callback):
    """At each epoch end, after the user's callbacks: report the row (rank 0), save a
    checkpoint when one is due (rank 0), and stop the round when the controller asked
    for a resize (a one-element broadcast from rank 0 keeps every rank in step).

    Parameters
    ----------
    rank : int
    report : callable(epoch, row, loggers)
        Sends a finished epoch's numbers, and the state of the rank-0 loggers after it,
        to the notebook (rank 0 only).
    save : callable(net, epoch) or None
        Saves a checkpoint at an epoch boundary if one is due (given to rank 0, or to
        every rank when each writes its own shard).
    stop_requested : callable() -> bool, or None
        Asked on rank 0 at each epoch end.
    max_epochs : int, optional
    state : dict, optional
        The training state the round started from (LR schedulers' and callbacks'
        state are put back from it).
    router : CallbackRouter, optional
        Which callbacks run on this rank (callback_router); it learns from here when
        the round stops for a resize.
    """

    def __init__(self, rank: int, report: Callable[[int, dict[str, Any], dict[str, Any]], None],
                 save: Callable[[Any, int], None] | None = None,
                 stop_requested: Callable[[], bool] | None = None,
                 max_epochs: int | None = None,
                 state: dict[str, Any] | None = None,
                 router: CallbackRouter | None = None) -> None:
        self.rank = rank
        self.router = router
        if router is not None:
            router.resizing = lambda: self.stopped
        self.max_epochs = max_epochs
        self.state = state
        self.report = report
        self.save = save
        self.stop_requested = stop_requested
        self.reported = 0
        self.stopped = False

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        # runs after the user's callbacks made their LR schedulers and reset what they
        # learned: put both back, as the fit had them
        from scalekit.training import callback_state
        from scalekit.training.state import restore_schedulers

        restore_schedulers(net, self.state)
        router = self.router
        if router is None:
            return
        saved = (self.state or {}).get("callbacks")
        callback_state.restore(net, saved, router.names(net, loggers=False))
        if router.plan.begun:  # loggers continue from the last epoch they reported
            callback_state.restore(net, dict(router.plan.logger_states),
                                   router.names(net, loggers=True))

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        par = getattr(net, "_sk_par", None)
        if par is not None:
            par.end_epoch()  # same collective on every rank, before anything is saved
        self._report(net)
        if self.save is not None:  # rank 0; every rank when shards are saved
            self.save(net, len(net.history))
        last = self.max_epochs is not None and len(net.history) >= self.max_epochs
        # every rank knows the epoch count: all skip the collective at the last epoch
        if not last and self.stop_requested is not None and self._agree(self.stop_requested):
            self.stopped = True
            raise RoundStopped

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        # EarlyStopping ends the fit inside on_epoch_end, before this callback runs
        self._report(net)

    def _report(self, net: Any) -> None:
        if self.rank != 0 or not len(net.history) or self.reported >= len(net.history):
            return
        self.reported = len(net.history)
        row = net.history[-1]
        scalars = {
            k: (bool(v) if isinstance(v, bool) else float(v))
            for k, v in row.items()
            if k != "batches" and isinstance(v, (numbers.Number, bool))
        }
        loggers: dict[str, Any] = {}
        if self.router is not None:
            from scalekit.training import callback_state

            loggers = callback_state.capture(net, self.router.names(net, loggers=True),
                                             json_safe=True)
        self.report(int(row.get("epoch", len(net.history))), scalars, loggers)

    def _agree(self, ask: Callable[[], bool]) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self.rank == 0 and ask() else 0])
        dist.broadcast(flag, src=0)
        return bool(flag.item())
