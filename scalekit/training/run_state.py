"""The states of a distributed fit, the moves between them, and the bookkeeping of
recoveries (plain data in, plain data out).

===========  ===========  ===================================  ==========================
from         to           when                                 the controller publishes
===========  ===========  ===================================  ==========================
STARTING     RUNNING      inputs checked, store opened         ``RunStarted``
RUNNING      RESIZING     a round stopped at a safe point      --
RESIZING     RUNNING      the next round's world is known      ``Resized``
RUNNING      RECOVERING   a round failed                       ``RankStatus`` "failed"
RECOVERING   RECOVERING   the next round failed before it ran  ``RankStatus`` "failed"
RECOVERING   RUNNING      the next round's first sign of life  ``Recovered``
RUNNING      FINISHED     the last round finished              ``TrainingReport``,
                                                               ``RunFinished``
any          FAILED       an error, a cancel, the failure      ``RunFinished`` (not from
                          budget spent                         STARTING: nothing started)
===========  ===========  ===================================  ==========================

The controller makes every move through its one transition method, which checks it
against :data:`TRANSITIONS` and publishes the events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from scalekit.errors import ScalekitError
from scalekit.events import Recovered
from scalekit.training.enums import StrEnum
from scalekit.training.messages import Position
from scalekit.training.policy import failures_in_a_row


class RunState(StrEnum):
    STARTING = "starting"  # checking inputs, opening the store; nothing sent yet
    RUNNING = "running"  # rounds train
    RESIZING = "resizing"  # a round stopped at a safe point; the next gets a new world
    RECOVERING = "recovering"  # a round failed; until the next one trains again
    FINISHED = "finished"
    FAILED = "failed"  # an error, a cancel, or the failure budget spent


TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.STARTING: frozenset({RunState.RUNNING, RunState.FAILED}),
    RunState.RUNNING: frozenset({RunState.RESIZING, RunState.RECOVERING, RunState.FINISHED,
                                 RunState.FAILED}),
    RunState.RESIZING: frozenset({RunState.RUNNING, RunState.FAILED}),
    # a recovered round may end before a message said it trains (nothing was left to
    # train, or the news is late): it then moves on from here
    RunState.RECOVERING: frozenset({RunState.RUNNING, RunState.RECOVERING, RunState.RESIZING,
                                    RunState.FINISHED, RunState.FAILED}),
    RunState.FINISHED: frozenset(),
    RunState.FAILED: frozenset(),
}


class TransitionError(ScalekitError, RuntimeError):
    """A move the state machine does not allow (a bug in the controller)."""


def check_transition(current: RunState, to: RunState) -> None:
    if to not in TRANSITIONS[current]:
        raise TransitionError(f"a fit cannot go from {current} to {to}")


def position_of(state: Mapping[str, Any] | None) -> tuple[int, int]:
    """(epoch, step) where a training state stands ((0, 0) for none)."""
    return (int(state["epoch"]), int(state["step"])) if state else (0, 0)


def newer(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> bool:
    """Whether state ``a`` is further than ``b`` (any state is further than none)."""
    return b is None or position_of(a) > position_of(b)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """A recovery under way: reported (``Recovered``) at the first sign of life of
    round ``generation`` or a later one.

    ``reached`` is the furthest position the failed round is known to have reached:
    the last progress message, or further where a failed rank reported more (progress
    messages are throttled; the failed ranks report where they stopped).
    """

    failed_at: float  # monotonic time the failure was noticed
    reached: Position
    reason: str
    generation: int

    def reached_further(self, position: Position) -> Recovery:
        if position.steps > self.reached.steps:
            return dataclasses.replace(self, reached=position)
        return self

    def lost_steps(self, state: Mapping[str, Any] | None) -> int:
        """Steps between the state restored from and the furthest one reached."""
        epoch, step = position_of(state)
        restored = Position(epoch, step, self.reached.n_batches)
        return max(0, self.reached.steps - restored.steps)

    def recovered(self, run_id: str, state: Mapping[str, Any] | None, *, world_size: int,
                  now: float) -> Recovered:
        epoch, step = position_of(state)
        return Recovered(run_id=run_id, reason=self.reason, epoch=epoch, step=step,
                         world_size=world_size, lost_steps=self.lost_steps(state),
                         downtime_s=now - self.failed_at)


@dataclasses.dataclass
class FailureBudget:
    """Counts failures in a row without progress (see :func:`.policy.failures_in_a_row`):
    a failure after the fit got past where the last one restored to starts afresh."""

    failures: int = 0
    restored_from: tuple[int, int] | None = None

    def count(self, restoring_to: tuple[int, int]) -> int:
        """Count a failure whose recovery would restore to ``restoring_to``; return
        the failures in a row, this one included."""
        progressed = self.restored_from is None or restoring_to > self.restored_from
        self.failures = failures_in_a_row(self.failures, progressed)
        return self.failures

    def restoring(self, position: tuple[int, int]) -> None:
        """The fit restores to ``position`` (the next failure compares with it)."""
        self.restored_from = position
