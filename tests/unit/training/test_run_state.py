"""The fit's states and the bookkeeping of recoveries (scalekit.training.run_state)."""

from __future__ import annotations

import pytest

from scalekit.events import Recovered
from scalekit.training.messages import Position
from scalekit.training.run_state import (
    TRANSITIONS,
    FailureBudget,
    Recovery,
    RunState,
    TransitionError,
    check_transition,
    newer,
    position_of,
)

S = RunState


@pytest.mark.parametrize(("current", "to", "allowed"), [
    (S.STARTING, S.RUNNING, True),
    (S.STARTING, S.FAILED, True),
    (S.STARTING, S.RECOVERING, False),  # no round ran yet
    (S.RUNNING, S.RESIZING, True),
    (S.RUNNING, S.RECOVERING, True),
    (S.RUNNING, S.FINISHED, True),
    (S.RUNNING, S.RUNNING, False),
    (S.RESIZING, S.RUNNING, True),
    (S.RESIZING, S.RECOVERING, False),  # a round runs (RUNNING) before it can fail
    (S.RESIZING, S.FINISHED, False),
    (S.RECOVERING, S.RUNNING, True),
    (S.RECOVERING, S.RECOVERING, True),  # the next round failed before it trained
    (S.RECOVERING, S.FINISHED, True),  # it had nothing left to train
    (S.FINISHED, S.FAILED, False),
    (S.FAILED, S.RUNNING, False),
])
def test_the_moves_a_fit_can_make(current, to, allowed):
    if allowed:
        check_transition(current, to)
    else:
        with pytest.raises(TransitionError):
            check_transition(current, to)


def test_every_state_but_the_ends_can_fail_and_the_ends_are_final():
    for state, targets in TRANSITIONS.items():
        if state in (S.FINISHED, S.FAILED):
            assert targets == frozenset()
        else:
            assert S.FAILED in targets
    assert set(TRANSITIONS) == set(RunState)


def test_positions_of_states():
    assert position_of(None) == (0, 0)
    assert position_of({"epoch": 3, "step": 40}) == (3, 40)
    assert newer({"epoch": 3, "step": 0}, {"epoch": 2, "step": 40})
    assert not newer({"epoch": 2, "step": 40}, {"epoch": 2, "step": 40})
    assert newer({"epoch": 0, "step": 0}, None)


def test_a_recovery_counts_the_steps_lost_since_the_state_it_restores():
    recovery = Recovery(failed_at=100.0, reached=Position(2, 3, 9), reason="rank 1 lost",
                        generation=4)
    further = recovery.reached_further(Position(2, 5, 9))
    assert further.reached == Position(2, 5, 9)
    assert further.reached_further(Position(1, 8, 9)) is further  # not further: unchanged
    event = further.recovered("r", {"epoch": 2, "step": 0}, world_size=1, now=101.5)
    assert isinstance(event, Recovered)
    assert (event.epoch, event.step, event.lost_steps, event.world_size) == (2, 0, 5, 1)
    assert event.downtime_s == pytest.approx(1.5) and event.reason == "rank 1 lost"
    # restored past what the messages told (a newer checkpoint): nothing lost
    assert recovery.lost_steps({"epoch": 3, "step": 0}) == 0
    assert recovery.lost_steps(None) == 21


def test_the_budget_counts_failures_in_a_row_without_progress():
    budget = FailureBudget()
    assert budget.count((2, 0)) == 1
    budget.restoring((2, 0))
    assert budget.count((2, 0)) == 2  # nothing newer saved since
    budget.restoring((2, 0))
    assert budget.count((3, 0)) == 1  # a newer checkpoint: progress resets it
