"""ClusterState: the latest cluster events folded, newer intents winning, the history."""

from __future__ import annotations

import dataclasses

import pytest

from scalekit.events import (
    AdaptChanged,
    ClusterSnapshot,
    Notice,
    RankStatus,
    Recovered,
    RunStarted,
    ScaleRequested,
)
from scalekit.views.cluster_state import ClusterState, used_fraction

from .snapshot_events import cluster_snapshot


def test_folds_the_latest_of_each_kind_and_ignores_the_rest() -> None:
    state = ClusterState()
    assert not state.live and state.adaptive is None and state.requested is None
    snap = cluster_snapshot(2, time=10.0)
    assert state.apply(snap) and state.snapshot is snap and state.live
    assert state.apply(Notice(level="info", message="hi")) and state.notice.message == "hi"
    assert not state.apply(RunStarted(run_id="r", max_epochs=1, batch_size=1, n_samples=1,
                                      world_size=1))
    assert state.apply(ClusterSnapshot(backend="local", status="closed"))
    assert not state.live


def test_an_intent_newer_than_the_sample_wins() -> None:
    state = ClusterState(snapshot=cluster_snapshot(2, adaptive=(2, 3), time=10.0))
    assert (state.requested, state.adaptive) == (2, (2, 3))
    state.apply(ScaleRequested(n=5, time=11.0))
    state.apply(AdaptChanged(time=11.0))  # off
    assert (state.requested, state.adaptive) == (5, None)
    state.apply(cluster_snapshot(5, adaptive=(1, 6), time=12.0))  # the sample caught up
    assert (state.requested, state.adaptive) == (5, (1, 6))
    state.apply(AdaptChanged(minimum=None, maximum=4, time=13.0))
    assert state.adaptive == (0, 4)


def test_an_intent_before_any_sample_counts() -> None:
    state = ClusterState()
    state.apply(ScaleRequested(n=3))
    state.apply(AdaptChanged(minimum=1, maximum=4))
    assert (state.requested, state.adaptive) == (3, (1, 4))


def test_history_keeps_running_samples_only_and_is_bounded() -> None:
    state = ClusterState(history=3)
    state.apply(ClusterSnapshot(backend="local", status="starting"))
    assert list(state.cpu_history) == []
    for cpu in (10.0, 20.0, 30.0, 40.0):
        state.apply(cluster_snapshot(2, cpu=cpu))
    assert list(state.cpu_history) == pytest.approx([20.0, 30.0, 40.0])
    assert list(state.memory_history) == pytest.approx([25.0] * 3)  # 0.5 of 2 GiB each
    assert ClusterState(history=0).cpu_history.maxlen == 2


def test_used_fraction_without_a_limit_is_zero() -> None:
    assert used_fraction(1.0, 4.0) == 0.25 and used_fraction(5.0, 0.0) == 0.0


def test_scaling_to_n_holds_until_a_later_sample_shows_the_n_workers() -> None:
    state = ClusterState()
    state.apply(cluster_snapshot(2, time=10.0))
    state.apply(ScaleRequested(n=3, time=11.0))
    state.apply(Notice(level="info", message="scaling to 3 workers", time=11.0))
    assert state.status_line == ("info", "scaling to 3 workers")
    starting = dataclasses.replace(cluster_snapshot(2, time=12.0), requested=3)
    state.apply(starting)  # the third worker is on its way
    assert state.status_line == ("info", "scaling to 3 workers")
    state.apply(cluster_snapshot(3, time=13.0))  # it arrived: the notice is done
    assert state.status_line is None and state.notice is not None


def test_errors_hold_and_training_warnings_clear_once_the_run_trains_again() -> None:
    state = ClusterState()
    state.apply(cluster_snapshot(2, time=10.0))
    state.apply(Notice(level="error", message="workers: choose 1..8", time=11.0))
    state.apply(cluster_snapshot(2, time=12.0))
    assert state.status_line == ("error", "workers: choose 1..8")
    state.apply(Notice(level="warning", message="recovering: rank 1 lost", time=13.0))
    assert not state.apply(RankStatus(run_id="r", rank=0, worker="w0", state="failed",
                                      time=13.5))
    assert state.status_line == ("warning", "recovering: rank 1 lost")
    # not a cluster event (the bridge folds it into the run), but the warning is over
    assert not state.apply(Recovered(run_id="r", reason="x", epoch=1, step=0, world_size=2,
                                     time=14.0))
    assert state.status_line is None


def test_adaptive_notices_settle_when_the_sample_shows_adaptive() -> None:
    state = ClusterState()
    state.apply(cluster_snapshot(2, time=10.0))
    state.apply(AdaptChanged(minimum=1, maximum=4, time=11.0))
    state.apply(Notice(level="info", message="adaptive: 1..4 workers", time=11.0))
    assert state.status_line is not None  # no sample since
    state.apply(cluster_snapshot(3, adaptive=(1, 4), time=13.0))
    assert state.status_line is None


def test_history_has_a_time_span() -> None:
    state = ClusterState()
    assert state.history_span_s == 0.0
    for t in (10.0, 11.0, 135.0):
        state.apply(cluster_snapshot(2, time=t))
    assert state.history_span_s == pytest.approx(125.0)
