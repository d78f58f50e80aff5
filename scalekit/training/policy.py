"""Pure decisions of the elastic controller, as functions of plain data.

The controller observes; these functions decide; the controller applies the decision.
Each is table-tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Mapping, Sequence

from scalekit.errors import TrainingError
from scalekit.training.enums import StrEnum


class FailureKind(StrEnum):
    """What went wrong in a round."""

    LOST = "lost"  # a worker or its process went away
    HUNG = "hung"  # a rank stopped beating, or stopped advancing while its peers waited
    COLLECTIVE = "collective"  # a rank failed only because a peer vanished
    USER = "user"  # user code raised: a bug that a retry repeats


class Action(StrEnum):
    """What the controller does after a failure."""

    RESTORE = "restore"  # from the newest state, on the workers left
    GIVE_UP = "give_up"  # raise a TrainingError


@dataclasses.dataclass(frozen=True)
class Failure:
    """What went wrong in a round (``kind`` accepts the values as strings too)."""

    kind: FailureKind
    rank: int | None = None
    worker: str | None = None
    message: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FailureKind(self.kind))


@dataclasses.dataclass(frozen=True)
class FailureDecision:
    action: Action
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))


def decide_after_failure(
    failure: Failure, *, failures_so_far: int, max_failures: int, workers_alive: int,
) -> FailureDecision:
    """Restore from the last checkpoint, or give up with a reason a user can act on.

    Parameters
    ----------
    failure : Failure
        The round's failure.
    failures_so_far : int
        Failures before this one *in a row*: since the fit last made progress (see
        :func:`failures_in_a_row`), so a days-long fit on preemptible nodes survives
        any number of failures spread over its life.
    max_failures : int
        Recoverable failures allowed in a row.
    workers_alive : int
        Workers connected now (the controller waits for at least one before a restore).
    """
    if failure.kind is FailureKind.USER:
        return FailureDecision(Action.GIVE_UP, "the error comes from the model or data code; "
                               "retrying would repeat it")
    if failures_so_far + 1 > max_failures:
        return FailureDecision(
            Action.GIVE_UP,
            f"{failures_so_far + 1} failures in a row without progress (no newer "
            f"checkpoint between them) exceed max_failures={max_failures}; raise "
            "scalekit.training.max-failures to tolerate more",
        )
    where = f" on {failure.worker}" if failure.worker else ""
    if workers_alive == 0:
        return FailureDecision(Action.RESTORE, f"rank {failure.rank} {failure.kind}{where}; "
                               "waiting for a worker, then restoring")
    return FailureDecision(Action.RESTORE, f"rank {failure.rank} {failure.kind}{where}; "
                           f"restoring on {workers_alive} worker(s)")


def training_error(failure: Failure, error: BaseException | None, reason: str
                   ) -> TrainingError:
    """The error a fit that gives up raises: the rank, its worker, what happened there
    (with the worker-side traceback when a rank raised ``error``)."""
    where = f"rank {failure.rank} on worker {failure.worker}"
    if error is None:
        return TrainingError(f"{where} {failure.kind}: {reason}. The cluster is still usable.",
                             rank=failure.rank, worker=failure.worker)
    tb = "".join(traceback.format_exception(error))
    raised = TrainingError(
        f"{where} failed: {type(error).__name__}: {error}\n"
        f"--- traceback on the worker ---\n{tb}",
        rank=failure.rank, worker=failure.worker, remote_traceback=tb,
    )
    raised.__cause__ = error  # as ``raise ... from error``
    return raised


def failures_in_a_row(before: int, progressed: bool) -> int:
    """The count of failures without progress, this one included.

    ``progressed``: the fit got further since the previous failure (the state it
    restores from now is newer than the one it restored from then). Progress resets
    the count: the budget is spent by failures that follow each other without any
    work saved in between, not by failures spread over a long fit.
    """
    return 1 if progressed else before + 1


def stalled_ranks(progress: Mapping[int, tuple[int, float]], waiting: Mapping[int, bool],
                  *, now: float, timeout: float) -> list[int]:
    """Ranks stuck in their own code while their peers wait for them.

    A rank deadlocked in user code (a lock, an endless loop) keeps its liveness beacon
    going, so it is not *silent*; but no rank's step advances any more, and the healthy
    ranks sit in a collective waiting for it. Those healthy ranks would be the first to
    time out (and be blamed); this names the one that is not waiting instead.

    Parameters
    ----------
    progress : mapping rank -> (step, since)
        Each rank's step count and the monotonic time it last changed.
    waiting : mapping rank -> bool
        Whether the rank's training thread was last seen in a collective (or the
        backward pass that runs one), i.e. waiting for its peers.
    now, timeout : float
        The current monotonic time; how long every rank must have been still
        (``0`` turns the check off).
    """
    if timeout <= 0 or len(progress) < 2:
        return []
    still = all(now - since >= timeout for _, since in progress.values())
    if not still:
        return []
    busy = sorted(r for r in progress if not waiting.get(r, False))
    if not busy or len(busy) == len(progress):
        return []  # all computing (a long step), or all waiting (a collective hang)
    return busy


def classify(errors: Sequence[tuple[int, str, bool]], lost: Sequence[int], hung: Sequence[int],
             stalled: Sequence[int] = ()) -> Failure | None:
    """Pick the root cause of a failed round.

    Parameters
    ----------
    errors : sequence of (rank, message, is_peer_failure)
        Ranks whose task raised.
    lost : sequence of int
        Ranks whose worker left the cluster.
    hung : sequence of int
        Ranks whose liveness beacon went silent.
    stalled : sequence of int
        Ranks stuck in their own code while their peers waited (:func:`stalled_ranks`).
    """
    for rank, message, peer in errors:
        if not peer:
            return Failure(FailureKind.USER, rank=rank, message=message)
    if hung:
        return Failure(FailureKind.HUNG, rank=min(hung))
    if stalled:
        return Failure(FailureKind.HUNG, rank=min(stalled),
                       message="stopped advancing while its peers waited for it")
    if lost:
        return Failure(FailureKind.LOST, rank=min(lost))
    if errors:
        rank, message, _ = min(errors)
        return Failure(FailureKind.COLLECTIVE, rank=rank, message=message)
    return None


@dataclasses.dataclass(frozen=True)
class ResizeDecision:
    """Whether to end the round at the next safe point, and the world to use next."""

    resize: bool
    world: tuple[str, ...]
    reason: str = ""


def decide_membership(
    round_workers: Sequence[str], alive: Sequence[str], *, max_world: int,
    shrink_to: int | None = None,
) -> ResizeDecision:
    """React to workers joining (grow at the next safe point) or a pending shrink.

    ``round_workers`` are the ranks' workers in rank order; ``alive`` the cluster's
    workers now. Workers that left are a *failure*, not a resize, and are handled by
    :func:`classify`; here only joins and planned shrinks matter.
    """
    current = list(round_workers)
    joined = [w for w in sorted(alive) if w not in current]
    if shrink_to is not None and shrink_to < len(current):
        return ResizeDecision(True, tuple(current[:shrink_to]),
                              f"scale down to {shrink_to} at the next safe point")
    room = max(0, max_world - len(current))
    if joined and room:
        world = tuple(current + joined[:room])
        return ResizeDecision(True, world, f"{len(world) - len(current)} worker(s) joined")
    return ResizeDecision(False, tuple(current))


def useful_world_size(n_samples: int, batch_size: int, *, min_per_rank: int = 8,
                      max_workers: int) -> int:
    """The largest world that still gives every rank at least ``min_per_rank`` samples
    of each global batch (beyond it, ranks mostly wait on each other)."""
    per_batch = min(batch_size, max(n_samples, 1))
    return max(1, min(max_workers, per_batch // max(min_per_rank, 1)))


def is_peer_failure(exc: BaseException | None) -> bool:
    """True when a rank failed only because another rank went away."""
    if exc is None:
        return True
    if type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError",
                              "RendezvousError"):
        return True
    if isinstance(exc, (BrokenPipeError, ConnectionError)):
        return True
    # gloo and nccl raise plain RuntimeErrors; recognise them by their own wording, not
    # by words a user's message could contain ("timeout", "socket", ...)
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "gloo/transport", "Connection closed by peer", "Connection reset by peer",
        "NCCL error", "ProcessGroupNCCL", "ProcessGroupGloo",
        "Socket Timeout", "Broken pipe",
    ))
