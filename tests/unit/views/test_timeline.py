"""TrainingState's timeline: resizes, failures, recoveries, checkpoints, world sizes."""

from __future__ import annotations

import pytest

from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
)
from scalekit.views.training_state import TrainingState

from .training_events import elastic_events, run_events


def _recovered(epoch: int, step: int = 0, world_size: int = 2, **kw: object) -> Recovered:
    return Recovered(run_id="run-1", reason=str(kw.pop("reason", "rank lost")), epoch=epoch,
                     step=step, world_size=world_size, **kw)  # type: ignore[arg-type]


def test_elastic_run_folds_into_a_timeline() -> None:
    s = TrainingState.from_events(elastic_events())
    assert [e.kind for e in s.timeline] == [
        "checkpoint", "resize", "checkpoint", "checkpoint", "failure", "recovery"]
    assert [(e.epoch, e.step) for e in s.timeline] == [
        (1, 0), (2, 0), (3, 0), (3, 5), (4, 5), (3, 5)]
    resize, recovery = s.timeline[1], s.timeline[5]
    assert resize.text == "world size 2 → 3 · workers joined" and resize.world_size == 3
    assert recovery.text == "recovered on 2 ranks · lost 10 steps · down 4.5 s · rank 2 lost"
    assert recovery.world_size == 2 and recovery.time == 1050.0
    assert s.timeline[4].text == "rank 2 on w2 failed (generation 1)"
    assert s.timeline[0].text == "checkpoint saved in 12 ms (3.0 MiB)"


def test_last_checkpoint_and_recovery_totals() -> None:
    s = TrainingState.from_events(elastic_events())
    assert s.last_checkpoint == CheckpointSaved(  # the event itself: one record, no copy
        run_id="run-1", epoch=3, step=5, url="file:///ck/3-5", seconds=0.012,
        nbytes=3 * 2**20, time=1036.0)
    assert (s.recoveries, s.lost_steps, s.downtime_s) == (1, 10, 4.5)
    s.apply(_recovered(4, lost_steps=3, downtime_s=0.5))
    assert (s.recoveries, s.lost_steps, s.downtime_s) == (2, 13, 5.0)
    s.apply(_recovered(4, lost_steps=-1, downtime_s=-2.0))  # nonsense counts as nothing
    assert (s.recoveries, s.lost_steps, s.downtime_s) == (3, 13, 5.0)


def test_nothing_before_any_event() -> None:
    s = TrainingState()
    assert s.timeline == [] and s.last_checkpoint is None
    assert (s.recoveries, s.lost_steps, s.downtime_s) == (0, 0, 0.0)
    assert s.world_size_at(3) is None and s.position == (0, 0)


def test_world_size_history_from_resizes_and_recoveries() -> None:
    s = TrainingState.from_events(elastic_events())
    # 2 ranks from the start, 3 from epoch 3 (resized after 2), 2 again from epoch 4
    assert s.world_sizes == [(0, 2), (3, 3), (4, 2)]
    assert [s.world_size_at(e) for e in range(1, 7)] == [2, 2, 3, 2, 2, 2]
    assert s.world_size_changes == [(3, 2, 3), (4, 3, 2)]


def test_resize_is_recorded_before_the_next_epoch_ends() -> None:
    s = TrainingState.from_events(run_events(epochs=2, status=None))
    s.apply(Resized(run_id="run-1", old=2, new=4, epoch=2))
    assert s.world_sizes == [(0, 2), (3, 4)] and s.world_size == 4
    s.apply(EpochEnded(run_id="run-1", epoch=3, row={"train_loss": 0.1}, world_size=4))
    assert s.world_sizes == [(0, 2), (3, 4)]  # the epoch agrees: no second entry
    assert s.timeline[-1].text == "world size 2 → 4"  # no reason, no " · "


def test_recovery_on_the_old_size_undoes_a_resize_not_yet_trained() -> None:
    s = TrainingState.from_events(run_events(epochs=2, status=None))
    s.apply(Resized(run_id="run-1", old=2, new=3, epoch=2))
    s.apply(_recovered(2, world_size=2))
    assert s.world_sizes == [(0, 2)] and s.world_size_changes == []


def test_recovery_without_a_world_size_keeps_the_history() -> None:
    s = TrainingState.from_events(run_events(epochs=2, status=None))
    s.apply(_recovered(2, world_size=0))
    assert s.world_sizes == [(0, 2)]
    assert s.timeline[-1].world_size is None
    assert s.timeline[-1].text.startswith("recovered · lost 0 steps")


def test_recovery_from_an_earlier_epoch_drops_the_rows_to_redo() -> None:
    s = TrainingState.from_events(run_events(epochs=5, max_epochs=8, status=None))
    s.apply(BatchProgress(run_id="run-1", epoch=5, batch=3, n_batches=10,
                          samples_per_s=1.0))
    version = s.version
    s.apply(_recovered(3, step=4, world_size=2))
    assert [r["epoch"] for r in s.rows] == [1, 2, 3]
    assert s.version == version + 1  # views redraw the table and charts
    assert s.batch is None and s.epochs_done == 3  # the epoch in progress is gone
    assert s.eta_s == pytest.approx(5 * 2.0)
    s.apply(EpochEnded(run_id="run-1", epoch=4, row={"train_loss": 0.9}, world_size=2))
    assert [r["epoch"] for r in s.rows] == [1, 2, 3, 4] and s.rows[-1]["train_loss"] == 0.9


def test_recovery_drops_rows_as_a_repeated_epoch_does() -> None:
    """Recovered(epoch=e) then EpochEnded(e + 1) leaves what EpochEnded(e + 1) alone does."""
    events = run_events(epochs=5, max_epochs=8, status=None)
    again = EpochEnded(run_id="run-1", epoch=3, row={"train_loss": 0.7}, world_size=3)
    by_epoch = TrainingState.from_events([*events, again])
    by_recovery = TrainingState.from_events([*events, _recovered(2, world_size=3), again])
    assert by_recovery.rows == by_epoch.rows
    assert by_recovery.world_sizes == by_epoch.world_sizes == [(0, 2), (3, 3)]


def test_recovery_at_or_after_the_last_row_keeps_every_row() -> None:
    s = TrainingState.from_events(run_events(epochs=3, max_epochs=8, status=None))
    version = s.version
    s.apply(_recovered(3, step=2))
    s.apply(_recovered(5))
    assert len(s.rows) == 3 and s.version == version


def test_failures_enter_the_timeline_once() -> None:
    s = TrainingState.from_events(run_events(epochs=2, max_epochs=5, status=None))
    s.apply(BatchProgress(run_id="run-1", epoch=2, batch=7, n_batches=10, samples_per_s=1.0))
    failed = RankStatus(run_id="run-1", rank=1, worker="w1", state="failed")
    s.apply(failed)
    s.apply(RankStatus(run_id="run-1", rank=1, worker="w1", state="failed"))  # again
    assert [(e.kind, e.epoch, e.step) for e in s.timeline] == [("failure", 2, 7)]
    s.apply(RunFinished(run_id="run-1", status="failed", epochs=2,
                        message="rank 1 on w1 failed: OOM\ntraceback"))
    assert s.timeline[-1].kind == "failure"
    assert s.timeline[-1].text == "run failed: rank 1 on w1 failed: OOM"
    assert (s.timeline[-1].epoch, s.timeline[-1].step) == (2, 7)


def test_failed_run_without_message_and_cancelled_run() -> None:
    failed = TrainingState.from_events(run_events(epochs=1, status="failed"))
    assert [e.text for e in failed.timeline] == ["run failed"]
    cancelled = TrainingState.from_events(run_events(epochs=1, status="cancelled"))
    assert cancelled.timeline == []


def test_other_runs_events_are_ignored() -> None:
    s = TrainingState.from_events(run_events(epochs=2, status=None))
    version = s.events_version
    assert not s.apply(Resized(run_id="other", old=2, new=9, epoch=1))
    assert not s.apply(Recovered(run_id="other", reason="x", epoch=0, step=0, world_size=1))
    assert not s.apply(CheckpointSaved(run_id="other", epoch=1, step=0, url="u", seconds=1.0))
    assert s.timeline == [] and s.last_checkpoint is None and s.recoveries == 0
    assert len(s.rows) == 2 and s.world_sizes == [(0, 2)] and s.events_version == version


def test_events_version_grows_only_when_the_timeline_part_changes() -> None:
    s = TrainingState.from_events(run_events(epochs=2, status=None))
    v = s.events_version
    s.apply(EpochEnded(run_id="run-1", epoch=3, row={"train_loss": 0.1}, world_size=2))
    s.apply(BatchProgress(run_id="run-1", epoch=3, batch=1, n_batches=4, samples_per_s=1.0))
    assert s.events_version == v  # same world size, no event: nothing to redraw there
    s.apply(CheckpointSaved(run_id="run-1", epoch=3, step=0, url="u", seconds=0.1))
    assert s.events_version > v
    v = s.events_version
    s.apply(EpochEnded(run_id="run-1", epoch=4, row={"train_loss": 0.1}, world_size=3))
    assert s.events_version > v


def test_checkpoint_alone_starts_the_run_and_counts_batches() -> None:
    s = TrainingState()
    s.apply(BatchProgress(run_id="r", epoch=0, batch=1, n_batches=25, samples_per_s=1.0))
    s.apply(CheckpointSaved(run_id="r", epoch=0, step=1, url="s3://b/k", seconds=2.0))
    assert s.running and s.n_batches == 25
    assert s.last_checkpoint is not None and s.last_checkpoint.url == "s3://b/k"
    assert s.timeline[-1].text == "checkpoint saved in 2.0 s"  # no size when unknown
