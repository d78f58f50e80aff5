"""Table tests of the elastic controller's pure decisions (scalekit.training.policy)."""

from __future__ import annotations

import dataclasses

import pytest

from scalekit.training.policy import (
    Failure,
    FailureDecision,
    ResizeDecision,
    classify,
    decide_after_failure,
    decide_membership,
    useful_world_size,
)

# -- decide_after_failure ---------------------------------------------------------------

LOST = Failure("lost", rank=1, worker="tcp://127.0.0.1:4001")
HUNG = Failure("hung", rank=0, worker="tcp://127.0.0.1:4000")
COLLECTIVE = Failure("collective", rank=1, message="Connection closed by peer")
USER = Failure("user", rank=0, message="ValueError: bad shape")


@pytest.mark.parametrize(
    ("failure", "so_far", "max_failures", "alive", "action", "says"),
    [
        # recoverable kinds within the budget: restore
        (LOST, 0, 3, 1, "restore", "restoring on 1 worker(s)"),
        (LOST, 2, 3, 2, "restore", "restoring on 2 worker(s)"),  # the 3rd of 3 is allowed
        (HUNG, 0, 3, 1, "restore", "rank 0 hung on tcp://127.0.0.1:4000"),
        (COLLECTIVE, 0, 1, 2, "restore", "rank 1 collective"),
        # nobody left: still a restore, once a worker arrives (the nanny restarts them)
        (LOST, 0, 3, 0, "restore", "waiting for a worker"),
        # the budget is spent
        (LOST, 3, 3, 2, "give_up", "4 failures in a row without progress"),
        (HUNG, 5, 3, 2, "give_up", "exceed max_failures=3"),
        (LOST, 0, 0, 2, "give_up", "1 failures in a row without progress (no newer "
                                   "checkpoint between them) exceed max_failures=0"),
        (LOST, 3, 3, 0, "give_up", "raise scalekit.training.max-failures"),
        # a bug in user code is never retried, whatever the budget
        (USER, 0, 3, 2, "give_up", "retrying would repeat it"),
        (USER, 0, 100, 0, "give_up", "model or data code"),
    ],
)
def test_decide_after_failure(failure, so_far, max_failures, alive, action, says):
    decision = decide_after_failure(failure, failures_so_far=so_far,
                                    max_failures=max_failures, workers_alive=alive)
    assert isinstance(decision, FailureDecision)
    assert decision.action == action
    assert says in decision.reason


def test_decide_after_failure_names_the_worker_only_when_known():
    with_worker = decide_after_failure(LOST, failures_so_far=0, max_failures=3,
                                       workers_alive=1)
    without = decide_after_failure(Failure("lost", rank=1), failures_so_far=0,
                                   max_failures=3, workers_alive=1)
    assert " on tcp://127.0.0.1:4001" in with_worker.reason
    assert without.reason == "rank 1 lost; restoring on 1 worker(s)"


# -- classify -----------------------------------------------------------------------------

PEER = "RuntimeError: Connection closed by peer [127.0.0.1]:1234"


@pytest.mark.parametrize(
    ("errors", "lost", "hung", "expected"),
    [
        # nothing wrong
        ([], [], [], None),
        # a worker left; its peers then fail in the collective: the loss is the cause
        ([], [1], [], Failure("lost", rank=1)),
        ([(0, PEER, True)], [1], [], Failure("lost", rank=1)),
        ([], [2, 1], [], Failure("lost", rank=1)),  # the lowest rank is reported
        # a silent beacon wins over a lost worker (the hung one is killed, then "lost")
        ([], [1], [0], Failure("hung", rank=0)),
        ([(1, PEER, True)], [], [2, 0], Failure("hung", rank=0)),
        # a rank's own exception is user code, even if peers also failed or left
        ([(1, "ValueError: boom", False)], [], [], Failure("user", rank=1,
                                                           message="ValueError: boom")),
        ([(0, PEER, True), (1, "KeyError: 'x'", False)], [2], [0],
         Failure("user", rank=1, message="KeyError: 'x'")),
        # only peer failures, nobody lost or hung: a collective failure, lowest rank
        ([(1, PEER, True), (0, "gloo timeout", True)], [], [],
         Failure("collective", rank=0, message="gloo timeout")),
    ],
    ids=["nothing", "lost", "lost-with-peer-errors", "lowest-lost", "hung-over-lost",
         "hung-lowest", "user", "user-over-everything", "collective"],
)
def test_classify(errors, lost, hung, expected):
    assert classify(errors, lost, hung) == expected


def test_classify_leaves_the_worker_to_the_caller():
    failure = classify([], [0], [])
    assert failure is not None and failure.worker is None
    assert dataclasses.replace(failure, worker="w").worker == "w"


# -- decide_membership ------------------------------------------------------------------

A, B, C, D = "tcp://a:1", "tcp://b:1", "tcp://c:1", "tcp://d:1"


@pytest.mark.parametrize(
    ("round_workers", "alive", "max_world", "shrink_to", "resize", "world", "reason"),
    [
        # steady state
        ([A, B], [A, B], 10, None, False, (A, B), ""),
        ([A, B], [B, A], 10, None, False, (A, B), ""),  # order of `alive` does not matter
        # a worker that left is a failure, not a resize
        ([A, B], [A], 10, None, False, (A, B), ""),
        # joins: appended after the current ranks (sorted), up to max_world
        ([A], [A, B], 10, None, True, (A, B), "1 worker(s) joined"),
        ([B], [D, C, B], 10, None, True, (B, C, D), "2 worker(s) joined"),
        ([A], [A, B, C], 2, None, True, (A, B), "1 worker(s) joined"),
        ([A, B], [A, B, C], 2, None, False, (A, B), ""),  # already at max_world
        ([A, B, C], [A, B, C, D], 2, None, False, (A, B, C), ""),  # above it: no room
        # planned shrink: keep the first ranks (rank 0 stays)
        ([A, B, C], [A, B, C], 10, 1, True, (A,), "scale down to 1"),
        ([A, B, C], [A, B, C], 10, 2, True, (A, B), "scale down to 2"),
        # a shrink wins over joins in the same check
        ([A, B], [A, B, C], 10, 1, True, (A,), "scale down to 1"),
        # a shrink to the current size or above is no shrink
        ([A, B], [A, B], 10, 2, False, (A, B), ""),
        ([A, B], [A, B, C], 10, 3, True, (A, B, C), "1 worker(s) joined"),
    ],
)
def test_decide_membership(round_workers, alive, max_world, shrink_to, resize, world, reason):
    decision = decide_membership(round_workers, alive, max_world=max_world,
                                 shrink_to=shrink_to)
    assert (decision.resize, decision.world) == (resize, world)
    assert reason in decision.reason
    assert isinstance(decision, ResizeDecision)
    if not resize:
        assert decision.reason == ""


# -- useful_world_size ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_samples", "batch_size", "min_per_rank", "max_workers", "expected"),
    [
        (10_000, 64, 8, 16, 8),  # 64 / 8
        (10_000, 64, 8, 4, 4),  # capped by max_workers
        (10_000, 256, 8, 100, 32),
        (10_000, 64, 16, 16, 4),
        (10_000, 7, 8, 16, 1),  # a batch smaller than min_per_rank: one worker
        (20, 64, 8, 16, 2),  # a dataset smaller than the batch: the batch is the dataset
        (0, 64, 8, 16, 1),  # degenerate: never below one
        (10_000, 64, 0, 16, 16),  # min_per_rank 0 counts as 1
        (10_000, 64, 8, 0, 1),  # never below one
    ],
)
def test_useful_world_size(n_samples, batch_size, min_per_rank, max_workers, expected):
    assert useful_world_size(n_samples, batch_size, min_per_rank=min_per_rank,
                             max_workers=max_workers) == expected


def test_useful_world_size_default_min_per_rank():
    assert useful_world_size(1000, 64, max_workers=100) == 8


# -- the decision objects are plain, frozen data ----------------------------------------


@pytest.mark.parametrize("obj", [LOST, FailureDecision("restore", "r"),
                                 ResizeDecision(True, (A,), "x")])
def test_decisions_are_frozen(obj):
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, None)


# -- adaptive scaling while a fit runs (moved from policy.adaptive_target to
#    scalekit.backends.adaptive.adaptive_decision; the same pure-decision contract) -----


@pytest.mark.parametrize(
    ("minimum", "maximum", "dask_target", "demand", "current", "target", "shrink_to"),
    [
        # no fit running: Dask's own target within the bounds, nothing deferred
        (1, 4, 2, None, 3, 2, None),
        (1, 4, 0, None, 3, 1, None),
        (1, 4, 9, None, 3, 4, None),
        (2, 4, 0, None, 1, 2, None),
        # a fit asks for its useful size although Dask sees no queued work
        (1, 4, 0, 3, 1, 3, None),
        (1, 4, 0, 8, 1, 4, None),  # capped by maximum
        (2, 8, 5, 3, 3, 5, None),  # Dask wants more than the fit: more
        (1, 4, 0, 2, 2, 2, None),  # steady
        # fewer wanted while a fit runs: keep the workers, shrink at the safe point
        (1, 4, 0, 1, 3, 3, 1),
        (2, 8, 1, 1, 5, 5, 2),  # never below minimum
        (1, 2, 0, 1, 3, 3, 1),
    ],
)
def test_adaptive_decision(minimum, maximum, dask_target, demand, current, target, shrink_to):
    from scalekit.backends.adaptive import adaptive_decision

    decision = adaptive_decision(minimum=minimum, maximum=maximum, dask_target=dask_target,
                                 demand=demand, current=current)
    assert (decision.target, decision.shrink_to) == (target, shrink_to)
    assert decision.reason


# -- a rank stuck in its own code -----------------------------------------------------------

from scalekit.training.policy import classify as _classify  # noqa: E402
from scalekit.training.policy import stalled_ranks  # noqa: E402


@pytest.mark.parametrize(("progress", "waiting", "expected"), [
    # rank 1 busy (a lock in a callback), rank 0 waits in the all-reduce: rank 1
    ({0: (40, 0.0), 1: (40, 0.0)}, {0: True, 1: False}, [1]),
    ({0: (40, 0.0), 1: (39, 0.0), 2: (40, 0.0)}, {0: True, 1: False, 2: True}, [1]),
    # every rank computing (a long step, or a hold in every rank): nobody
    ({0: (40, 0.0), 1: (40, 0.0)}, {0: False, 1: False}, []),
    # every rank waiting (a collective hang: the silent-beacon check's business)
    ({0: (40, 0.0), 1: (40, 0.0)}, {0: True, 1: True}, []),
    # a rank advanced recently: the world is moving
    ({0: (40, 0.0), 1: (41, 9.0)}, {0: True, 1: False}, []),
    # one rank alone cannot wait for anyone
    ({0: (40, 0.0)}, {0: False}, []),
    # waiting unknown counts as busy
    ({0: (40, 0.0), 1: (40, 0.0)}, {0: True}, [1]),
])
def test_stalled_ranks(progress, waiting, expected):
    assert stalled_ranks(progress, waiting, now=10.0, timeout=6.0) == expected


def test_stall_detection_waits_for_the_timeout_and_can_be_off():
    progress, waiting = {0: (5, 0.0), 1: (5, 0.0)}, {0: True, 1: False}
    assert stalled_ranks(progress, waiting, now=5.9, timeout=6.0) == []
    assert stalled_ranks(progress, waiting, now=6.0, timeout=6.0) == [1]
    assert stalled_ranks(progress, waiting, now=100.0, timeout=0.0) == []


def test_a_stalled_rank_is_a_hang_that_names_it():
    failure = _classify([], [], [], stalled=[2])
    assert (failure.kind, failure.rank) == ("hung", 2)
    assert "peers waited" in failure.message
    # a silent beacon or a user error still comes first
    assert _classify([], [], [0], stalled=[2]).rank == 0
    assert _classify([(2, "ValueError: x", False)], [], [], stalled=[1]).kind == "user"


@pytest.mark.parametrize(("before", "progressed", "expected"), [
    (0, True, 1), (0, False, 1), (2, False, 3), (7, True, 1),
])
def test_failures_in_a_row_reset_with_progress(before, progressed, expected):
    from scalekit.training.policy import failures_in_a_row

    assert failures_in_a_row(before, progressed) == expected


def test_a_long_fit_survives_many_failures_spread_over_its_life():
    """Ten preemptions, each after some saved progress: never more than one in a row."""
    from scalekit.training.policy import failures_in_a_row

    count = 0
    for _ in range(10):
        count = failures_in_a_row(count, progressed=True)
        assert decide_after_failure(LOST, failures_so_far=count - 1, max_failures=3,
                                    workers_alive=2).action == "restore"
    for _ in range(3):  # then failures with nothing saved in between
        count = failures_in_a_row(count, progressed=False)
    assert decide_after_failure(LOST, failures_so_far=count - 1, max_failures=3,
                                workers_alive=2).action == "give_up"


# -- the kinds are enums ---------------------------------------------------------------------


def test_failure_kinds_and_actions_are_enums_that_read_as_their_values():
    from scalekit.training.policy import Action, FailureKind

    assert LOST.kind is FailureKind.LOST  # given as a string, kept as the enum
    assert Failure(FailureKind.USER) == Failure("user")
    decision = decide_after_failure(USER, failures_so_far=0, max_failures=3, workers_alive=1)
    assert decision.action is Action.GIVE_UP and decision.action == "give_up"
    assert f"{FailureKind.HUNG}" == str(FailureKind.HUNG) == "hung"  # in messages
    with pytest.raises(ValueError):
        Failure("exploded")
    with pytest.raises(ValueError):
        FailureDecision("retry", "no such action")
