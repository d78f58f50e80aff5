"""skorch callbacks for ``sk.fit``: where a callback runs, and one the notebook steers.

:func:`on_rank_zero` marks a callback whose job is a side effect (a logger, a writer) to
run once, on rank 0; :func:`on_every_rank` marks one that decides the training to run on
every rank; :func:`placement` says where a callback runs and why (docs/callbacks.md has
the rule and the table of skorch's own).

:class:`PauseAt` holds every rank of a distributed fit at one chosen step until the
notebook releases it, so that a notebook, a demo or a test can act at a known point of
the training (add a worker, kill one mid-epoch, look at the cluster) however fast or
slow the machine trains::

    pause = sk.callbacks.PauseAt(epoch=3, batch=20)
    net = NeuralNetClassifier(MyModule, callbacks=[("pause", pause)], ...)
    run = sk.fit(net, X, y, wait=False)
    where = pause.wait_until_paused()      # every rank waits after step 20 of epoch 3
    ...                                    # act while the fit stands still
    pause.release()                        # the ranks go on

It talks through the Dask scheduler (an ``Event`` and one ``Variable`` per rank, found
by name with ``distributed.get_client()`` on the ranks), so it works wherever the fit
runs: local worker processes, in-process workers or Kubernetes pods, with no shared disk.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

from skorch.callbacks import Callback

from scalekit.errors import ConfigError, UsageError
from scalekit.training.callback_rules import (
    Placement,
    on_every_rank,
    on_rank_zero,
    placement,
    placements,
)

logger = logging.getLogger(__name__)

POLL_S = 0.25  # how often a held rank looks again (each look is one scheduler round trip)


@dataclasses.dataclass(frozen=True)
class Paused:
    """Where the ranks of a fit are held by a :class:`PauseAt`.

    Attributes
    ----------
    epoch : int
        The epoch (1-based, as in ``net.history``) the ranks are in.
    batch : int or None
        Training steps of that epoch done (counted from the epoch's start, also across
        a resume); ``None`` when they wait at the epoch's end.
    world_size : int
        How many ranks the fit has there.
    workers : tuple of str
        The Dask worker address of each rank, in rank order.
    """

    epoch: int
    batch: int | None
    world_size: int
    workers: tuple[str, ...]


class PauseAt(Callback):
    """Hold every rank of a fit at one step until :meth:`release` is called.

    The ranks wait once, at the first point of the fit that matches: after ``batch``
    training steps of epoch ``epoch`` (or of the first later epoch the fit trains, e.g.
    when it was resumed past it), or at the end of that epoch when ``batch`` is
    ``None``. With ``world_size`` only an epoch trained by that many ranks counts, so
    ``PauseAt(batch=20, world_size=3)`` holds after step 20 of the first epoch on three
    workers, whenever the third one joined. Once released (also when released before
    the ranks got there) it never holds again: use a new ``PauseAt`` for another pause.

    It changes no number of the training: it only waits, between two steps, and reads
    no random number. While the ranks wait, their liveness beacons go on, so a pause
    of any length is not taken for a hang.

    Parameters
    ----------
    epoch : int, default 1
        The epoch to hold in (1-based), or the first one to consider with ``world_size``.
    batch : int or None, default None
        Hold after this many training steps of the epoch (``0``: before its first step);
        ``None``: at the end of the epoch, after the callbacks listed before this one and
        before the epoch's checkpoint and scalekit's check for a resize. A world size
        change asked for while the ranks wait therefore happens at this epoch's end with
        ``batch=None``, at the end of the epoch after a pause inside it.
    world_size : int, optional
        Only hold in an epoch trained by exactly this many ranks.
    timeout : float, optional
        Seconds after which the ranks go on by themselves, released or not (a safety net
        for unattended runs); default: wait until released.
    name : str, optional
        Names the pause's state on the Dask scheduler (default: a fresh random name). Two
        ``PauseAt`` with the same name are the same pause, e.g. for another process to
        release it.

    Notes
    -----
    Killing a held worker: release the pause right after the kill. The other ranks
    notice the lost peer at their next collective; a rank still held a second after its
    peer was lost is ended as stuck, and its worker restarted.
    """

    rank_zero_only = False  # it holds every rank (see on_every_rank)

    def __init__(self, epoch: int = 1, batch: int | None = None, *,
                 world_size: int | None = None, timeout: float | None = None,
                 name: str | None = None) -> None:
        _check_int("PauseAt.epoch", epoch, 1)
        if batch is not None:
            _check_int("PauseAt.batch", batch, 0)
        if world_size is not None:
            _check_int("PauseAt.world_size", world_size, 1)
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError("PauseAt.timeout", timeout, "a number of seconds > 0, or None")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError("PauseAt.name", name, "a non-empty string, or None")
        self.epoch = epoch
        self.batch = batch
        self.world_size = world_size
        self.timeout = timeout
        # the one identity the notebook's object and the ranks' copies share
        self.name = name or uuid.uuid4().hex
        # skorch takes every attribute not ending in "_" for a parameter
        self.passed_ = False  # this copy (one rank, one round) went past the pause

    def __repr__(self) -> str:
        return f"PauseAt({self.where()}, name={self.name!r})"

    def where(self) -> str:
        """The pause point in words, e.g. ``"after step 20 of epoch 3"``."""
        epoch = f"epoch {self.epoch}" if self.world_size is None else (
            f"the first epoch from {self.epoch} on with {self.world_size} ranks"
            if self.epoch > 1 else f"the first epoch with {self.world_size} ranks")
        if self.batch is None:
            return f"at the end of {epoch}"
        if self.batch == 0:
            return f"at the start of {epoch}"
        return f"after step {self.batch} of {epoch}"

    # -- on the ranks (skorch's hooks) ----------------------------------------------------
    def on_epoch_begin(self, net: Any, **kwargs: Any) -> None:
        if self.batch == 0 and not len(net.history[-1]["batches"]):
            self._arrive(net, 0)

    def on_batch_end(self, net: Any, training: bool = False, **kwargs: Any) -> None:
        if training and self.batch:
            # counted from the epoch's start: a resumed epoch holds its earlier steps too
            if len(net.history[-1]["batches"]) == self.batch:
                self._arrive(net, self.batch)

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        if self.batch is None:
            self._arrive(net, None)

    def _arrive(self, net: Any, batch: int | None) -> None:
        epoch = len(net.history)
        if self.passed_ or epoch < self.epoch:
            return
        rank, world = rank_and_world()
        if self.world_size is not None and world != self.world_size:
            return
        signals = _Signals(_rank_client(), self.name)
        if signals.released():  # released before we got here, or held in an earlier round
            self.passed_ = True
            return
        signals.arrive(rank, {"rank": rank, "world_size": world, "epoch": epoch,
                              "batch": batch, "worker": _worker_address()})
        logger.info("rank %d of %d holds %s", rank, world, self.where())
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not signals.wait_released(POLL_S):
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning("rank %d goes on: %r was not released within %gs", rank,
                               self, self.timeout)
                break
        self.passed_ = True

    # -- in the notebook ------------------------------------------------------------------
    def wait_until_paused(self, timeout: float = 120.0, *, run: Any = None,
                          client: Any = None) -> Paused:
        """Block until every rank of the fit waits at this pause; say where.

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.
        run : TrainingRun, optional
            The fit: stop waiting (with its error, or a ``UsageError``) if it ends first.
        client : distributed.Client, optional
            Default: the current scalekit session's client.

        Returns
        -------
        Paused

        Raises
        ------
        TimeoutError
            The ranks did not all get there in time.
        """
        signals = _Signals(_notebook_client(client), self.name)
        deadline = time.monotonic() + timeout
        while True:
            found = self._all_arrived(signals)
            if found is not None:
                return found
            if run is not None and getattr(run, "done", False):
                run.wait()  # raises the fit's error, if it failed
                raise UsageError(f"the fit ended before every rank held {self.where()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the fit's ranks did not all hold {self.where()} within {timeout:g}s")
            time.sleep(0.05)

    def is_paused(self, *, client: Any = None) -> bool:
        """Whether every rank of the fit waits at this pause now."""
        signals = _Signals(_notebook_client(client), self.name)
        return not signals.released() and self._all_arrived(signals) is not None

    def release(self, *, client: Any = None) -> None:
        """Let the ranks go on (or, before they got here, pass without stopping)."""
        signals = _Signals(_notebook_client(client), self.name)
        first = signals.arrival(0)
        signals.release(range(int(first["world_size"]) if first else 1))

    @staticmethod
    def _all_arrived(signals: _Signals) -> Paused | None:
        first = signals.arrival(0)
        if first is None:
            return None
        records = [first, *(signals.arrival(r) for r in range(1, int(first["world_size"])))]
        point = (first["epoch"], first["batch"], first["world_size"])
        # records of another point belong to an earlier round that failed while held
        if any(r is None or (r["epoch"], r["batch"], r["world_size"]) != point for r in records):
            return None
        return Paused(epoch=int(first["epoch"]), batch=first["batch"],
                      world_size=int(first["world_size"]),
                      workers=tuple(str(r["worker"]) for r in records))  # type: ignore[index]


# -- the pause's state on the Dask scheduler --------------------------------------------


class _Signals:
    """An ``Event`` for the release and one ``Variable`` per rank for where it waits,
    all named after the pause."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.prefix = f"scalekit-pause-{name}"

    def _event(self) -> Any:
        from distributed import Event

        return Event(f"{self.prefix}-release", client=self.client)

    def _variable(self, rank: int) -> Any:
        from distributed import Variable

        return Variable(f"{self.prefix}-rank-{rank}", client=self.client)

    def released(self) -> bool:
        return bool(self._event().is_set())

    def wait_released(self, timeout: float) -> bool:
        return bool(self._event().wait(timeout=timeout))

    def arrive(self, rank: int, record: dict[str, Any]) -> None:
        self._variable(rank).set(record)

    def arrival(self, rank: int) -> dict[str, Any] | None:
        try:
            # a short wait: the scheduler answers at once when the variable is set
            return self._variable(rank).get(timeout=0.01)
        except TimeoutError:
            return None

    def release(self, ranks: Any) -> None:
        self._event().set()  # stays set: the pause never holds again
        for rank in ranks:  # where each rank waited is no longer needed
            self._variable(rank).delete()


def rank_and_world() -> tuple[int, int]:
    """This rank and the world size of its process group (0 of 1 outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_client() -> Any:
    """The Dask client of the worker this rank runs on."""
    from distributed import get_client, get_worker

    try:
        get_worker()
    except ValueError:
        raise UsageError(
            "PauseAt holds the ranks of sk.fit, which run on Dask workers; here (not on a "
            "worker) nothing could release it. Use it in a net given to sk.fit.") from None
    return get_client()


def _worker_address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def _notebook_client(client: Any) -> Any:
    if client is not None:
        return client
    from scalekit.session import current_session

    session = current_session()
    if session is not None:
        return session.client
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise UsageError("no cluster found: start one with sk.cluster() or pass "
                         "client=<the fit's distributed.Client>") from None


def _check_int(field: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, value, f"an integer >= {minimum}")


__all__ = ["PauseAt", "Paused", "Placement", "on_every_rank", "on_rank_zero", "placement",
           "placements"]
