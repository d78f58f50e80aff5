"""Samples/s, defined once: measured from the progress events, never divided by ~0 s."""

from __future__ import annotations

import math

import pytest

from scalekit.events import BatchProgress, EpochEnded, Recovered, Resized, RunFinished, RunStarted
from scalekit.views.lab_text import run_view
from scalekit.views.throughput import (
    MIN_SPAN_S,
    WINDOW_S,
    Throughput,
    rate_between,
    throughput_text,
)
from scalekit.views.training_render import stats_text
from scalekit.views.training_state import TrainingState

T0 = 1_000.0


def _start(batch_size: int = 32, n_samples: int = 3200) -> RunStarted:
    return RunStarted(run_id="r", max_epochs=10, batch_size=batch_size, n_samples=n_samples,
                      world_size=2, time=T0)


def _batch(epoch: int, batch: int, at: float, *, n_batches: int = 100,
           rank_figure: float = 1.0) -> BatchProgress:
    return BatchProgress(run_id="r", epoch=epoch, batch=batch, n_batches=n_batches,
                         samples_per_s=rank_figure, time=T0 + at)


@pytest.mark.parametrize("seconds", [0.0, 1e-9, 1e-3, MIN_SPAN_S / 2, -1.0, math.nan, None])
def test_no_rate_over_zero_or_near_zero_time(seconds: float | None) -> None:
    assert rate_between(64.0, seconds) is None


def test_rate_over_a_long_enough_span_and_never_negative() -> None:
    assert rate_between(3200.0, 2.0) == pytest.approx(1600.0)
    assert rate_between(-64.0, 2.0) is None  # a rollback is no negative throughput
    assert rate_between(math.inf, 2.0) is None


def test_window_rate_from_positions_and_event_times() -> None:
    tp = Throughput()
    tp.started(_start())
    for i, at in enumerate((0.5, 1.0, 1.5, 2.5)):
        tp.progress(_batch(0, 10 * (i + 1), at))
    # 30 steps of 32 samples in 2.0 s, whatever the rank said about itself
    assert tp.rate == pytest.approx(30 * 32 / 2.0)
    assert tp.span_s == pytest.approx(2.0)


def test_reports_that_arrive_together_give_no_figure_yet() -> None:
    """The sidebar's 64000000000 samples/s: 64 samples over ~1e-9 s, right after a
    recovery. Two reports at (nearly) the same instant are no time span."""
    tp = Throughput()
    tp.started(_start(batch_size=64))
    tp.progress(_batch(3, 1, 5.0, rank_figure=64e9))
    tp.progress(_batch(3, 2, 5.0 + 1e-6, rank_figure=64e9))
    assert tp.rate is None


def test_the_window_keeps_the_last_seconds_only() -> None:
    tp = Throughput()
    tp.started(_start())
    tp.progress(_batch(0, 1, 0.0))
    tp.progress(_batch(0, 2, 1.0))  # slow start: 1 step in the first second
    for k in range(1, 31):
        tp.progress(_batch(0, 2 + 10 * k, 1.0 + 0.5 * k))  # then 20 steps/s
    assert tp.span_s <= WINDOW_S + 0.5
    assert tp.rate == pytest.approx(20 * 32)


def test_a_rollback_or_a_restart_starts_a_new_window() -> None:
    tp = Throughput()
    tp.started(_start())
    tp.progress(_batch(2, 50, 0.0))
    tp.progress(_batch(2, 90, 2.0))
    tp.progress(_batch(2, 10, 3.0))  # back to a checkpoint: not a negative rate
    assert len(tp.points) == 1 and tp.rate is None
    tp.progress(_batch(2, 30, 4.0))
    assert tp.rate == pytest.approx(20 * 32 / 1.0)
    tp.restart()
    assert tp.rate is None


def test_steps_across_epochs_count_and_the_last_partial_batch_is_capped() -> None:
    tp = Throughput()
    tp.started(_start(batch_size=64, n_samples=1000))  # 16 batches: 15 x 64 + 40
    tp.progress(_batch(0, 8, 0.0, n_batches=16))
    tp.progress(_batch(1, 8, 2.0, n_batches=16))
    assert tp.epoch_samples == 1000
    assert tp.rate == pytest.approx(1000 / 2.0)  # one epoch in 2 s


def _recovery_run() -> TrainingState:
    s = TrainingState()
    s.apply(_start())
    s.apply(_batch(0, 20, 1.0))
    s.apply(_batch(0, 60, 3.0))
    return s


def test_the_state_shows_the_window_while_running_and_no_rank_figure_after_a_recovery() -> None:
    s = _recovery_run()
    assert s.samples_per_s == pytest.approx(40 * 32 / 2.0)
    assert stats_text(s).startswith("640 samples/s (last 2 s) · world size 2")
    s.apply(Recovered(run_id="r", reason="rank 1 lost", epoch=0, step=40, world_size=2,
                      time=T0 + 8.0))
    s.apply(_batch(0, 41, 8.1, rank_figure=64e9))  # the rank's figure after a resume
    assert s.samples_per_s is None
    assert stats_text(s).startswith("– samples/s (measuring) · ")
    assert "64000000000" not in run_view(s)["details"][1]
    s.apply(_batch(0, 61, 9.1))
    assert s.samples_per_s == pytest.approx(20 * 32 / 1.0)


def test_a_resize_starts_a_new_window() -> None:
    s = _recovery_run()
    s.apply(Resized(run_id="r", old=2, new=3, epoch=1, time=T0 + 10))
    assert s.samples_per_s is None


def test_the_final_figure_is_the_whole_run_and_says_so() -> None:
    s = _recovery_run()
    s.apply(_batch(0, 100, 4.0))
    for epoch in (1, 2):
        s.apply(EpochEnded(run_id="r", epoch=epoch, row={"train_loss": 1.0}, world_size=2,
                           time=T0 + 4.0 * epoch))
    s.apply(RunFinished(run_id="r", status="finished", epochs=2, time=T0 + 10.0))
    # 2 epochs x 3200 samples over the 10 s from start to end, start-up included
    assert s.samples_per_s == pytest.approx(640.0)
    assert stats_text(s).startswith(
        "640 samples/s over the whole run (start-up included) · world size 2")


def test_thousands_separator_and_unknown() -> None:
    tp = Throughput()
    tp.started(_start(batch_size=1024, n_samples=10**6))
    tp.progress(_batch(0, 1, 0.0, n_batches=977))
    tp.progress(_batch(0, 27, 2.0, n_batches=977))
    # 26 steps of the set's 10**6 samples / 977 steps (the last batch is partial), 2 s
    assert throughput_text(tp, running=True, epochs_trained=0, elapsed_s=2.0) == (
        "13,306 samples/s (last 2 s)")
    assert throughput_text(Throughput(), running=False, epochs_trained=0,
                           elapsed_s=None) == "– samples/s"
