"""TrainingState folding and the pure training renderers (text, HTML, line chart)."""

from __future__ import annotations

import pytest

from scalekit.events import (
    BatchProgress,
    EpochEnded,
    Notice,
    RankStatus,
    RunStarted,
    TrainingReport,
)
from scalekit.views.training_render import training_html, training_text
from scalekit.views.training_state import TrainingState

from .training_events import rows, run_events


def test_fold_a_finished_run() -> None:
    s = TrainingState.from_events(run_events(epochs=4, max_epochs=4))
    assert (s.run_id, s.status, s.max_epochs, s.epochs_done) == ("run-1", "finished", 4, 4)
    assert [r["epoch"] for r in s.rows] == [1, 2, 3, 4]
    assert s.world_size == 2 and s.world_size_changes == []
    assert s.eta_s is None  # over
    # no progress reports: the rows' train_samples_per_s (a rank's figure) is not used
    assert s.samples_per_s is None
    assert sorted(s.ranks) == [0, 1]


def test_eta_from_mean_epoch_duration_and_batch_progress() -> None:
    events = run_events(epochs=2, max_epochs=10, status=None)
    s = TrainingState.from_events(events)
    assert s.running and s.mean_epoch_dur == pytest.approx(2.0)
    assert s.eta_s == pytest.approx(8 * 2.0)
    s.apply(BatchProgress(run_id="run-1", epoch=2, batch=5, n_batches=10, samples_per_s=42.0))
    assert s.batch_fraction == pytest.approx(0.5)
    assert s.eta_s == pytest.approx(7.5 * 2.0)
    assert s.samples_per_s is None  # one report: no time span to measure over yet


def test_world_size_changes_are_recorded() -> None:
    s = TrainingState.from_events(run_events(epochs=6, max_epochs=6, grow_at=5))
    assert s.world_sizes == [(0, 2), (5, 3)]
    assert s.world_size_changes == [(5, 2, 3)]
    # epoch 5 is the first at 3 ranks: the change came after epoch 4 (as Resized.epoch)
    assert "world size 3 (2 → 3 after epoch 4)" in training_text(s)


def test_other_runs_are_ignored_and_notices_kept() -> None:
    events = run_events("mine", epochs=2, status=None)
    events.insert(2, EpochEnded(run_id="other", epoch=1, row={"train_loss": 9.0},
                                world_size=7))
    events.append(Notice(level="warning", message="worker w2 left"))
    s = TrainingState.from_events(events, run_id="mine")
    assert [r["train_loss"] for r in s.rows] == [1.0, 0.5]
    assert s.world_size == 2
    assert s.notice == ("warning", "worker w2 left")


def test_first_run_seen_is_kept_without_run_id() -> None:
    s = TrainingState.from_events([*run_events("a", epochs=1), *run_events("b", epochs=3)])
    assert s.run_id == "a" and len(s.rows) == 1


def test_rollback_replaces_later_rows() -> None:
    events = run_events(epochs=4, max_epochs=6, status=None)
    events.append(EpochEnded(run_id="run-1", epoch=3, row={"train_loss": 0.7, "dur": 1.0},
                             world_size=1))
    s = TrainingState.from_events(events)
    assert [r["epoch"] for r in s.rows] == [1, 2, 3]
    assert s.rows[-1]["train_loss"] == 0.7
    assert s.world_size_changes == [(3, 2, 1)]


def test_rank_failures_and_new_generation() -> None:
    s = TrainingState()
    s.apply(RunStarted(run_id="r", max_epochs=3, batch_size=8, n_samples=80, world_size=2))
    for rank in (0, 1):
        s.apply(RankStatus(run_id="r", rank=rank, worker=f"w{rank}", state="training"))
    s.apply(RankStatus(run_id="r", rank=1, worker="w1", state="failed"))
    assert s.ranks[1].state == "failed" and len(s.incidents.open) == 1
    s.apply(RankStatus(run_id="r", rank=0, worker="w0", state="rendezvous", generation=1))
    assert list(s.ranks) == [0] and s.ranks[0].generation == 1
    s.apply(RankStatus(run_id="r", rank=1, worker="w1", state="done", generation=0))
    assert list(s.ranks) == [0]  # a stale report from the old group
    assert s.incidents.by_generation[0].root.worker == "w1"


def test_keys_follow_skorch_printlog() -> None:
    s = TrainingState.from_events(run_events(epochs=2))
    assert s.table_keys == ["epoch", "train_loss", "valid_acc", "valid_loss", "dur"]
    assert s.loss_keys == ["train_loss", "valid_loss"]
    assert s.score_keys == ["valid_acc"]


def test_text_has_summary_and_epoch_table_with_best_marks() -> None:
    text = training_text(run_events(epochs=4))
    assert text.splitlines()[0] == "scalekit training · run run-1 · finished"
    assert "epoch 4/4" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("epoch  "))
    assert lines[header].split() == ["epoch", "train_loss", "valid_acc", "valid_loss", "dur"]
    table = lines[header + 2: header + 6]
    assert [line.split()[0] for line in table] == ["1", "2", "3", "4"]
    assert table[2].split()[3] == "0.7000"  # epoch 3 valid_loss: not the best
    assert table[2].split()[1] == "0.3333*"
    assert "(* best so far)" in text


def test_text_of_a_failed_run_shows_the_message() -> None:
    text = training_text(run_events(
        epochs=1, status="failed", message="rank 1 on w1 failed: OOM\ntraceback line"))
    assert "failed: rank 1 on w1 failed: OOM" in text and "traceback line" in text


def test_html_escapes_and_has_the_parts() -> None:
    events = run_events("<run>", epochs=3, status="failed", message="<b>boom</b>")
    html = training_html(events)
    assert "&lt;run&gt;" in html and "&lt;b&gt;boom&lt;/b&gt;" in html and "<b>boom" not in html
    for css in ("scalekit-epoch-progress", "scalekit-loss-chart", "scalekit-epoch-table",
                "scalekit-training-status", "scalekit-score-chart", "scalekit-rank-chips"):
        assert css in html
    assert html.count('class="scalekit-epoch-row"') == 3  # up to 5 rows: no expander
    assert "scalekit-epoch-more" not in html


def test_html_before_any_event() -> None:
    html = training_html([])
    assert "waiting" in html and "scalekit-epoch-table" not in html


def test_rows_helper_marks_bests_like_skorch() -> None:
    r = rows(3)
    assert [x["valid_loss_best"] for x in r] == [True, True, False]


def _report(run_id: str = "run-1", **kw: object) -> TrainingReport:
    return TrainingReport(run_id=run_id, strategy="ddp", world_size=2, samples_per_s=900.0,
                          peak_rss=(3 * 2**30, 3 * 2**30), **kw)  # type: ignore[arg-type]


def test_peak_gpu_memory_per_rank_from_the_report() -> None:
    events = run_events(epochs=2, max_epochs=2, status=None)
    events.append(_report(peak_gpu_memory=(int(3.5 * 2**30), int(3.25 * 2**30))))
    events.append(_report("other-run", peak_gpu_memory=(2**30,)))  # not this run's
    s = TrainingState.from_events(events)
    assert s.peak_gpu_memory == (int(3.5 * 2**30), int(3.25 * 2**30))
    line = "peak GPU memory per rank 3.50, 3.25 GiB"
    text = training_text(s)
    assert line in text.splitlines()[2]  # on the throughput line
    assert line in training_html(s)


def test_a_run_without_cuda_shows_no_gpu_memory() -> None:
    events = run_events(epochs=2, max_epochs=2)
    events.insert(-1, _report())  # the controller publishes it just before RunFinished
    s = TrainingState.from_events(events)
    assert s.peak_gpu_memory == ()
    assert "GPU" not in training_text(s) and "GPU" not in training_html(s)
