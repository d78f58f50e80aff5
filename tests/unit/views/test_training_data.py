"""Sharded data in the training view: RunStarted's data fields and each rank's
ShardProgress folded into TrainingState, drawn as text and HTML (issue 17)."""

from __future__ import annotations

from scalekit.events import RankStatus, RunStarted, ShardProgress
from scalekit.views.training_render import data_html, data_text, training_html, training_text
from scalekit.views.training_state import TrainingState

from .training_events import run_events

MiB = 2**20


def started(sampling: str = "sharded") -> list:
    return [RunStarted(run_id="run-1", max_epochs=3, batch_size=64, n_samples=1000,
                       world_size=2, sampling=sampling, n_shards=80,
                       data_bytes=1000 * MiB, source="parquet: 2,500,000 rows, 80 shards")]


def progress(rank: int, done: int, *, epoch: int = 0, total: int = 40,
             generation: int = 0) -> ShardProgress:
    return ShardProgress(run_id="run-1", rank=rank, worker=f"tcp://w{rank}:1", epoch=epoch,
                         shards_done=done, shards_total=total, rows_done=done * 100,
                         rows_total=total * 100, bytes_read=done * 12 * MiB,
                         buffered=24 * MiB, read_s=0.5, generation=generation)


def test_shard_progress_is_kept_per_rank() -> None:
    s = TrainingState.from_events([*started(), progress(0, 3), progress(1, 2),
                                   progress(0, 5)])
    assert (s.sampling, s.n_shards, s.data_bytes) == ("sharded", 80, 1000 * MiB)
    assert {r: (p.shards_done, p.shards_total) for r, p in s.shards.items()} == {
        0: (5, 40), 1: (2, 40)}
    assert s.status == "running"


def test_a_new_epoch_or_generation_starts_afresh_and_stale_progress_is_dropped() -> None:
    s = TrainingState.from_events([*started(), progress(0, 40), progress(1, 39),
                                   progress(0, 1, epoch=1)])
    assert list(s.shards) == [0] and s.shards[0].epoch == 1  # rank 1 has not reported yet
    s.apply(progress(1, 40, epoch=0))  # late, from the epoch that is over
    assert list(s.shards) == [0]
    s.apply(progress(0, 2, epoch=1, total=80, generation=1))  # recovered on one rank
    s.apply(progress(1, 7, epoch=1, generation=0))  # the lost group's rank
    assert {r: (p.shards_total, p.generation) for r, p in s.shards.items()} == {0: (80, 1)}


def test_text_shows_shards_done_of_total_per_rank() -> None:
    s = TrainingState.from_events([*started(), progress(0, 12), progress(1, 10)])
    assert data_text(s) == "data: sharded · 80 shards, 1000.0 MiB"
    text = training_text(s)
    assert "data: sharded · 80 shards" in text
    assert "rank 0: 12/40 shards (1,200/4,000 rows), epoch 1 · 24.0 MiB buffered" in text
    assert "rank 1: 10/40 shards" in text


def test_html_draws_a_bar_per_rank_filled_to_its_rows() -> None:
    s = TrainingState.from_events([*started(), progress(0, 10), progress(1, 30)])
    html = data_html(s)
    assert html.count('class="scalekit-rank-data"') == 2
    assert "rank 0: 10/40 shards" in html and "rank 1: 30/40 shards" in html
    assert "width:25.0%" in html and "width:75.0%" in html
    assert 'title="parquet: 2,500,000 rows, 80 shards"' in html
    assert "scalekit-data" in training_html(s)


def test_exact_runs_show_no_data_row() -> None:
    s = TrainingState.from_events(run_events(epochs=2, max_epochs=2))
    assert s.sampling == "exact" and data_text(s) == "" and data_html(s) == ""
    assert "data:" not in training_text(s)


def test_progress_of_other_runs_is_ignored() -> None:
    s = TrainingState.from_events([*started(), RankStatus(run_id="run-1", rank=0, worker="w",
                                                          state="training")])
    other = ShardProgress(run_id="run-2", rank=0, worker="w", epoch=0, shards_done=1,
                          shards_total=2)
    assert not s.apply(other) and s.shards == {}
