"""One round of training on a fixed set of workers, watched until it settles.

A round ends in one of three ways: every rank finished (or stopped at a safe point for
a resize), or a failure: a rank's worker left, a rank's liveness beacon went silent, or
a rank raised. On a failure the ranks still blocked in a collective are ended so that
nothing hangs; the controller then decides what to do (:mod:`.policy`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit.training.enums import StrEnum
from scalekit.training.policy import (
    Failure,
    classify,
    decide_membership,
    is_peer_failure,
    stalled_ranks,
)
from scalekit.training.rank import (
    FIRST_IMPORTS,
    RankResult,
    RankSpec,
    rendezvous_name,
    run_rank,
)
from scalekit.training.worker_ops import SILENT_FACTOR, bounded, unresponsive

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger(__name__)

POLL_S = 0.05
MEMBERSHIP_S = 0.2
START_ALLOWANCE_S = 120.0  # importing torch on a fresh, busy worker can take a while
SETTLE_S = 1.0  # after a failure, how long the surviving ranks get to fail on their own
GONE_S = 15.0  # how long to wait for ended workers to leave before the next round


class OutcomeKind(StrEnum):
    """How a round ended."""

    FINISHED = "finished"  # the fit is done (or stopped early by a callback)
    RESIZE = "resize"  # stopped at a safe point for a new world; the state moves on
    FAILED = "failed"  # a rank was lost, hung or raised
    RETRY = "retry"  # the workers changed while the round was being set up


@dataclasses.dataclass
class RoundOutcome:
    kind: OutcomeKind  # (its values as strings are accepted too)
    results: list[RankResult] = dataclasses.field(default_factory=list)
    failure: Failure | None = None
    next_world: tuple[str, ...] = ()
    failed_at: float = 0.0  # monotonic time the failure was noticed
    error: BaseException | None = None  # the root cause's exception, when a rank raised

    def __post_init__(self) -> None:
        self.kind = OutcomeKind(self.kind)


@dataclasses.dataclass
class Beacons:
    """Last liveness beat per rank of the current generation (monotonic seconds), with
    where the rank runs, its step count (and since when) and whether it was waiting in
    a collective."""

    generation: int = -1
    last: dict[int, float] = dataclasses.field(default_factory=dict)
    where: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)  # host, pid
    progress: dict[int, tuple[int, float]] = dataclasses.field(default_factory=dict)
    waiting: dict[int, bool] = dataclasses.field(default_factory=dict)

    def beat(self, generation: int, rank: int, host: str, pid: int, step: int = 0,
             waiting: bool = False) -> None:
        if generation != self.generation:
            return
        now = time.monotonic()
        self.last[rank] = now
        self.where[rank] = (host, pid)
        self.waiting[rank] = waiting
        if rank not in self.progress or self.progress[rank][0] != step:
            self.progress[rank] = (step, now)

    def reset(self, generation: int) -> None:
        self.generation, self.last, self.where = generation, {}, {}
        self.progress, self.waiting = {}, {}

    def stalled(self, timeout: float) -> list[int]:
        """Ranks stuck in their own code while the others wait (see policy)."""
        return stalled_ranks(self.progress, self.waiting, now=time.monotonic(),
                             timeout=timeout)

    def silent(self, timeout: float) -> list[int]:
        now = time.monotonic()
        return sorted(r for r, t in self.last.items() if now - t > timeout)

    def never_started(self, ranks: int, since: float, allowance: float) -> list[int]:
        """Ranks that sent no beat at all ``allowance`` seconds after ``since``."""
        if time.monotonic() - since < allowance:
            return []
        return [r for r in range(ranks) if r not in self.last]


def warm_worker() -> None:
    """Pay a fresh worker's one-off costs (importing torch, its first optimizer step,
    which imports torch._dynamo) before it joins a round."""
    with FIRST_IMPORTS:  # not while a RankSpec is unpickled (see rank.FIRST_IMPORTS)
        import torch

        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        p.sum().backward()
        opt.step()
        import skorch  # noqa: F401


async def _exit_process() -> None:  # runs on a worker's event loop, not its blocked thread
    # a coroutine: distributed's Worker.run refuses wait=False for plain functions
    # ("Combination not supported"), which left stuck ranks running
    os._exit(1)


class Round:
    """Submit the ranks of one generation and watch them."""

    def __init__(self, client: Client, spec: RankSpec, workers: list[str],
                 data: list[Future] | Callable[[], list[Future]],
                 *, beacons: Beacons, hang_timeout: float, max_world: int,
                 shrink_to: Callable[[], int | None],
                 kill: Callable[[str, tuple[str, int] | None], None],
                 eligible: Callable[[list[str], list[str]], list[str]] | None = None,
                 stall_timeout: float = 0.0, idle: Callable[[], None] | None = None) -> None:
        self.client = client
        self.spec = spec
        self.workers = workers
        self.data = data
        self.beacons = beacons
        self.hang_timeout = hang_timeout
        self.stall_timeout = stall_timeout
        self.max_world = max_world
        self.shrink_to = shrink_to
        self.kill = kill
        # (current, joining) -> the joining workers that could take a rank beside the
        # current ones (a GPU each, ...)
        self.eligible = eligible
        self.idle = idle  # called while the round is watched (shows rank 0's printed lines)
        self.stop_requested = False
        self.next_world: tuple[str, ...] = ()
        self.warming: dict[str, Future] = {}
        self.cancelled = threading.Event()  # set from another thread: end the round now
        self.started = time.monotonic()
        # first beat due after rendezvous; fresh workers also import torch first
        self.start_allowance = spec.rendezvous_timeout + START_ALLOWANCE_S

    def run(self) -> RoundOutcome:
        from distributed import Event

        self.beacons.reset(self.spec.generation)
        stop = Event(self.spec.stop_event, client=self.client)
        try:
            data = self.data() if callable(self.data) else self.data
            spec_future = bounded(
                lambda: self.client.scatter(self.spec, hash=False, broadcast=True,
                                            workers=self.workers),
                self.spec.rendezvous_timeout, "sending the round's spec")
            futures = [
                self.client.submit(
                    run_rank, spec_future, rank, *data,
                    key=f"scalekit-rank-{self.spec.run_id}-g{self.spec.generation}-r{rank}",
                    workers=[address], allow_other_workers=False, pure=False,
                )
                for rank, address in enumerate(self.workers)
            ]
        except Exception as exc:
            # a worker that leaves while the round is set up makes the scheduler fail
            # a scatter or submit naming it (KeyError, CommClosedError, ...), one that
            # stopped makes it time out: that is a change of membership (the stopped one
            # is ended), and the round starts again on the workers there are
            self._forget(stop)
            if self._members_changed():
                logger.info("round %d: workers changed while it started (%s: %s); again",
                            self.spec.generation, type(exc).__name__, exc)
                return RoundOutcome(OutcomeKind.RETRY, error=exc)
            raise
        try:
            return self._watch(futures, stop)
        except BaseException:  # interrupted or cancelled: no rank may run on
            self._abandon(futures)
            raise
        finally:
            self._forget(stop)

    def _forget(self, stop: Any) -> None:
        """Leave nothing of this round on the scheduler (its stop event, its
        rendezvous variable): a long fit runs many rounds."""
        from distributed import Variable

        try:
            stop.clear()
            Variable(rendezvous_name(self.spec.run_id, self.spec.generation),
                     client=self.client).delete()
        except Exception:  # the scheduler may be going away with the cluster
            logger.debug("could not clean up round %d", self.spec.generation, exc_info=True)

    def _abandon(self, futures: list[Future]) -> None:
        """End every rank still running (a running task cannot be cancelled; its
        process can, and the nanny starts a fresh worker)."""
        running = [self.workers[i] for i, f in enumerate(futures) if f.status == "pending"]
        for f in [*futures, *self.warming.values()]:
            f.cancel()
        if running:
            self._end(running)

    def _end(self, workers: list[str]) -> None:
        try:
            self.client.run(_exit_process, workers=workers, wait=False)
        except Exception:
            logger.debug("could not end %s", workers, exc_info=True)

    def _watch(self, futures: list[Future], stop: Any) -> RoundOutcome:
        alive = set(self.workers)
        checked = 0.0
        while True:
            if self.cancelled.is_set():
                raise KeyboardInterrupt("training cancelled")
            states = [f.status for f in futures]
            if all(s == "finished" for s in states):
                for f in self.warming.values():
                    f.cancel()
                results = self.client.gather(futures)
                kind = (OutcomeKind.RESIZE if results[0].stopped == "resize"
                        else OutcomeKind.FINISHED)
                return RoundOutcome(kind, results=results, next_world=self.next_world)
            now = time.monotonic()
            if now - checked > MEMBERSHIP_S:
                alive = set(self.client.nthreads())
                checked = now
                self._maybe_resize(alive, stop)
            lost = [r for r, w in enumerate(self.workers) if w not in alive]
            hung = [r for r in self.beacons.silent(self.hang_timeout) if states[r] == "pending"]
            # a rank that never says a word (stuck importing, unpickling or meeting the
            # others) must not hang the fit either
            hung += [r for r in self.beacons.never_started(len(futures), self.started,
                                                           self.start_allowance)
                     if states[r] == "pending" and r not in hung]
            stalled = [r for r in self.beacons.stalled(self.stall_timeout)
                       if states[r] == "pending" and r not in hung]
            errors = [
                (r, str(futures[r].exception()), is_peer_failure(futures[r].exception()))
                for r, s in enumerate(states) if s == "error"
            ]
            if lost or hung or stalled or errors:
                return self._fail(futures, lost, hung, errors, stalled)
            if self.idle is not None:
                self.idle()
            time.sleep(POLL_S)

    def _maybe_resize(self, alive: set[str], stop: Any) -> None:
        if self.stop_requested:
            return
        # a new worker first imports torch and builds an optimizer (1-3 s) on its own;
        # only then does the round stop for it, so the others do not wait on that
        for address in alive - set(self.workers) - set(self.warming):
            self.warming[address] = self.client.submit(
                warm_worker, key=f"scalekit-warm-{address}-{time.time()}", workers=[address],
                allow_other_workers=False, pure=False)
        ready = {a for a, f in self.warming.items() if f.status != "pending"}
        joining = sorted(alive & ready)
        if joining and self.eligible is not None:
            joining = self.eligible(list(self.workers), joining)
        candidates = sorted((alive & set(self.workers)) | set(joining))
        decision = decide_membership(self.workers, candidates, max_world=self.max_world,
                                     shrink_to=self.shrink_to())
        if decision.resize:
            logger.info("round %d: %s", self.spec.generation, decision.reason)
            self.stop_requested = True
            self.next_world = decision.world
            stop.set()

    def _fail(self, futures: list[Future], lost: list[int], hung: list[int],
              errors: list[tuple[int, str, bool]], stalled: list[int] = ()) -> RoundOutcome:
        noticed = time.monotonic()
        alive = set(self.client.nthreads())  # the error may have come before the news
        lost = sorted(set(lost) | {r for r, w in enumerate(self.workers) if w not in alive})
        failure = classify(errors, lost, hung, stalled)
        hung = sorted(set(hung) | set(stalled))  # ended alike: their process is killed
        assert failure is not None
        rank = failure.rank if failure.rank is not None else 0
        failure = dataclasses.replace(failure, worker=self.workers[rank])
        for r in hung:  # a stopped process answers nothing: kill it
            self.kill(self.workers[r], self.beacons.where.get(r))
        # give the surviving ranks a moment to fail on their own (gloo notices a peer's
        # closed sockets at once), then end those still blocked in a collective
        deadline = noticed + SETTLE_S
        while time.monotonic() < deadline:
            if all(f.status != "pending" for i, f in enumerate(futures) if i not in lost + hung):
                break
            time.sleep(POLL_S)
        stuck = [self.workers[i] for i, f in enumerate(futures)
                 if f.status == "pending" and i not in lost + hung]
        # before cancelling: a cancelled future no longer holds its exception
        error = futures[rank].exception() if futures[rank].status == "error" else None
        for f in futures:
            f.cancel()
        if stuck:
            logger.warning("ending workers stuck in a collective: %s", stuck)
            # in a thread: reaching a worker that is going away can take a while
            threading.Thread(target=self._end, args=(stuck,), daemon=True).start()
        for f in self.warming.values():
            f.cancel()
        # the next round must not count on workers that are being ended
        self._wait_gone(stuck + [self.workers[r] for r in hung])
        return RoundOutcome(OutcomeKind.FAILED, failure=failure, failed_at=noticed, error=error)

    def _wait_gone(self, workers: list[str], timeout: float = GONE_S) -> None:
        deadline = time.monotonic() + timeout
        while workers and time.monotonic() < deadline:
            if not set(workers) & set(self.client.nthreads()):
                return
            time.sleep(POLL_S)

    def _members_changed(self) -> bool:
        """Whether a worker of this round has left or stopped answering (an
        unresponsive one is ended; its nanny starts a fresh worker), waiting a little
        for the news."""
        deadline = time.monotonic() + GONE_S
        while True:
            try:
                alive = set(self.client.nthreads())
                silent = self._unresponsive()
            except Exception:  # the client itself is gone: not a membership change
                return False
            if set(self.workers) - alive:
                return True
            if silent:
                for address in silent:
                    logger.warning("ending worker %s: no heartbeat for over %gs",
                                   address, SILENT_FACTOR * self.hang_timeout)
                    self.kill(address, None)
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)

    def _unresponsive(self) -> list[str]:
        return unresponsive(self.client, self.workers, SILENT_FACTOR * self.hang_timeout)
