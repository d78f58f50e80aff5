"""On each rank: which of the net's callbacks a skorch hook reaches (see
:mod:`.callback_rules` for the rule), and over how many rounds a fit spans.

A fit may take several rounds (a resize, a recovery); skorch calls ``on_train_begin``
and ``on_train_end`` once per ``partial_fit``, i.e. per round. Callbacks should see
one fit:

* ``on_train_end`` reaches the user's callbacks only when the fit ends, not when a round
  stops for a resize (``EarlyStopping(load_best=True)`` would load its best weights
  mid-fit; ``MlflowLogger`` would end its run);
* ``on_train_begin`` reaches callbacks that decide on every round (they rebuild what a
  fresh copy lacks: an LR scheduler), and their learned state is put back right after
  (:class:`.callbacks.RoundControl`); rank-0 loggers get it only in the fit's first
  round, and later rounds give them back the state they had after the last epoch
  they reported;
* rank-0 loggers skip the epochs the fit already reported (after a recovery they are
  trained again, from the last checkpoint): each epoch is logged once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from scalekit.training.callback_rules import Placement, Where, placement

ROUND_CONTROL = "scalekit_round"


@dataclasses.dataclass(frozen=True)
class RoundCallbacks:
    """What a round's ranks need to know about the fit's callbacks so far (plain data,
    sent in the :class:`~.rank.RankSpec`).

    Attributes
    ----------
    begun : bool
        An earlier round of this fit began training (its callbacks saw
        ``on_train_begin``).
    reported : int
        The last epoch the notebook received from rank 0 (1-based; 0: none).
    logger_states : dict
        The rank-0 loggers' state after that epoch (from :mod:`.callback_state`).
    cwd : str
        The notebook's working directory: relative folders of side-effect callbacks
        are taken from there.
    """

    begun: bool = False
    reported: int = 0
    logger_states: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cwd: str = ""


class CallbackRouter:
    """Filters skorch's ``notify`` on one rank of one round.

    Parameters
    ----------
    rank : int
    plan : RoundCallbacks
    """

    def __init__(self, rank: int, plan: RoundCallbacks | None = None) -> None:
        self.rank = rank
        self.plan = plan or RoundCallbacks()
        self.resizing: Callable[[], bool] = lambda: False  # set once RoundControl exists
        self._placements: dict[str, tuple[Any, Placement]] = {}

    # -- which callbacks a hook reaches ----------------------------------------------------
    def placement_of(self, name: str, callback: Any) -> Placement:
        known = self._placements.get(name)
        if known is None or known[0] is not callback:
            known = self._placements[name] = (callback, placement(callback))
        return known[1]

    def calls(self, name: str, callback: Any, method: str, epoch: int) -> bool:
        """Whether ``callback`` (called ``name``) gets ``method`` in ``epoch`` (1-based;
        the current one while it runs)."""
        if name == ROUND_CONTROL:
            return True
        if method == "on_train_end" and self.resizing():
            return False  # the fit goes on in the next round
        where = self.placement_of(name, callback)
        if where.rank_zero and self.rank != 0:
            return False
        if where.logger:
            if method == "on_train_begin":
                return not self.plan.begun
            if method != "on_train_end" and epoch <= self.plan.reported:
                return False  # reported already, before a recovery
        return True

    def notify(self, net: Any, method: str, kwargs: Mapping[str, Any]) -> None:
        """skorch's ``NeuralNet.notify``, filtered."""
        getattr(net, method)(net, **kwargs)
        epoch = len(net.history)
        for name, callback in net.callbacks_:
            if self.calls(name, callback, method, epoch):
                getattr(callback, method)(net, **kwargs)
                if method == "on_epoch_end" and self.rank == 0:
                    self._flush(callback)  # logged epochs survive a kill of rank 0

    # -- names by kind -----------------------------------------------------------------------
    def names(self, net: Any, *, loggers: bool) -> list[str]:
        """The callbacks this rank runs that are rank-0 loggers (or are not)."""
        out = []
        for name, callback in net.callbacks_:
            where = self.placement_of(name, callback)
            if name == ROUND_CONTROL or (where.rank_zero and self.rank != 0):
                continue
            if where.logger == loggers:
                out.append(name)
        return out

    # -- the round's start and end on rank 0 -----------------------------------------------
    def prepare(self, net: Any, where: str) -> None:
        """Before training: ranks other than 0 stay quiet (skorch's callbacks print when
        ``net.verbose``: rank 0 speaks for all); rank 0 resolves its side-effect
        callbacks' folders against the notebook's and checks it can write them."""
        from scalekit.training.tracking import check_targets, resolve_folders

        if self.rank != 0:
            vars(net)["verbose"] = 0
            return
        for name, callback in net.callbacks_:
            if name != ROUND_CONTROL and self.placement_of(name, callback).rank_zero:
                resolve_folders(callback, self.plan.cwd)
                check_targets(name, callback, where)

    def close(self, net: Any) -> None:
        """After the round (finished, stopped or failed): close the TensorBoard writers
        it opened, so nothing logged stays in a buffer."""
        from scalekit.training.tracking import writers_of

        for _, callback in getattr(net, "callbacks_", []):
            for writer in writers_of(callback):
                try:
                    writer.close()
                except Exception:  # a broken writer must not hide the round's outcome
                    pass

    def _flush(self, callback: Any) -> None:
        from scalekit.training.tracking import writers_of

        for writer in writers_of(callback):
            writer.flush()


def notebook_cwd() -> str:
    return os.getcwd()


__all__ = ["CallbackRouter", "RoundCallbacks", "Where", "notebook_cwd"]
