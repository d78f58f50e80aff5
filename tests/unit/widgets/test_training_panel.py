"""TrainingPanel through its widget model: a real EventBus, synthetic events, no browser."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from views.training_events import elastic_events, run_events

from scalekit.config import MIN_REFRESH_S
from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    EventBus,
    Notice,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    TrainingReport,
)
from scalekit.views import timeline_render
from scalekit.views.html import DANGER_COLOR
from scalekit.widgets.cluster_panel import WIDGET_VIEW
from scalekit.widgets.training_panel import TrainingPanel


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def panels() -> Iterator[list[TrainingPanel]]:
    made: list[TrainingPanel] = []
    yield made
    for p in made:
        p.close()


def _panel(bus: EventBus, panels: list[TrainingPanel], **kw: object) -> TrainingPanel:
    p = TrainingPanel(bus, run_id="run-1", **kw)  # type: ignore[arg-type]
    panels.append(p)
    return p


def _publish(bus: EventBus, events: list) -> None:
    for e in events:
        bus.publish(e)


def _eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``check`` until it holds (the trailing redraw runs on a timer thread)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _polylines(html: str, svg_class: str) -> dict[str, int]:
    svg = re.search(rf'<svg class="{svg_class}".*?</svg>', html, re.S)
    assert svg is not None, html
    found = re.findall(r'data-series="([^"]+)"[^>]*points="([^"]*)"', svg[0])
    return {name: len(points.split()) for name, points in found}


def test_live_run_reaches_the_end(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    assert "waiting" in p.status_html.value
    _publish(bus, run_events(epochs=5, max_epochs=5))
    assert (p.epoch_bar.value, p.epoch_bar.max) == (5, 5)
    assert p.epoch_bar.bar_style == "success"
    assert "epoch 5/5" in p.epoch_label.value
    assert "finished" in p.status_html.value and "5 epochs" in p.status_html.value
    assert p.state.status == "finished"


def test_eta_and_batch_progress(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, run_events(epochs=2, max_epochs=10, status=None))
    assert "epoch 2/10 · ETA 16s" in p.epoch_label.value  # 8 epochs of 2 s left
    now = time.time()
    bus.publish(BatchProgress(run_id="run-1", epoch=2, batch=3, n_batches=10,
                              samples_per_s=1234.0, time=now - 2.0))
    assert "– samples/s (measuring)" in p.stats_html.value  # not the rank's 1,234
    bus.publish(BatchProgress(run_id="run-1", epoch=2, batch=5, n_batches=10,
                              samples_per_s=1234.0, time=now))
    assert (p.batch_bar.value, p.batch_bar.max) == (5, 10)
    assert "epoch 3: batch 5/10" in p.batch_label.value
    assert p.batch_box.layout.display == "flex"
    assert "ETA 15s" in p.epoch_label.value
    # 2 batches of 64 samples in 2 s, measured from the events
    assert "64 samples/s (last 2 s)" in p.stats_html.value
    bus.publish(EpochEnded(run_id="run-1", epoch=3, row={"train_loss": 0.3, "dur": 2.0},
                           world_size=2))
    assert p.batch_box.layout.display == "none"  # that epoch is over


def test_curves_have_one_polyline_per_series(
    bus: EventBus, panels: list[TrainingPanel]
) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=6, max_epochs=8, status=None))
    assert _polylines(p.charts_html.value, "scalekit-loss-chart") == {
        "train_loss": 6, "valid_loss": 6}
    assert _polylines(p.charts_html.value, "scalekit-score-chart") == {"valid_acc": 6}


def test_table_has_a_row_per_epoch_with_best_marks(
    bus: EventBus, panels: list[TrainingPanel]
) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=4))
    table = p.table_html.value
    assert 'class="scalekit-epoch-table"' in table
    heads = re.findall(r"<th[^>]*>([^<]+)</th>", table)
    assert heads == ["epoch", "train_loss", "valid_acc", "valid_loss", "dur"]
    body = re.findall(r'<tr class="scalekit-epoch-row">(.*?)</tr>', table)
    assert len(body) == 4
    third = re.findall(r"<td([^>]*)>([^<]*)</td>", body[2])
    assert third[0][1] == "3"
    assert "scalekit-best" in third[1][0]  # train_loss improved
    assert "scalekit-best" not in third[3][0] and third[3][1] == "0.7000"  # valid_loss not


def test_world_size_changes_are_shown(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=6, max_epochs=6, grow_at=5))
    assert "world size 3 (2 → 3 after epoch 4)" in p.stats_html.value


def test_rank_chips_show_failed(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=1, status=None))
    assert p.ranks_html.value.count("scalekit-rank-training") == 2
    bus.publish(RankStatus(run_id="run-1", rank=1, worker="tcp://10.0.0.1:4000",
                           state="failed"))
    assert "scalekit-rank-failed" in p.ranks_html.value
    assert DANGER_COLOR in p.ranks_html.value
    assert "rank 1 on tcp://10.0.0.1:4000 failed" in p.status_html.value


def test_failed_run_shows_its_message(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    message = "rank 1 on w1 failed: RuntimeError: <boom>\n--- traceback ---\nFile x"
    _publish(bus, run_events(epochs=2, max_epochs=5, status="failed", message=message))
    status = p.status_html.value
    assert "failed: rank 1 on w1 failed: RuntimeError: &lt;boom&gt;" in status
    assert "<details>" in status and "File x" in status
    assert p.epoch_bar.bar_style == "danger"
    assert p._unsubscribe is None  # the run is over: no longer listening


def test_other_runs_are_ignored(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=2, max_epochs=4, status=None))
    before = p.renders
    _publish(bus, run_events("other", epochs=4, max_epochs=9, world=5, status="failed",
                             message="not mine"))
    assert p.renders == before
    assert p.state.max_epochs == 4 and len(p.state.rows) == 2 and p.state.running
    assert "not mine" not in p.status_html.value and "world size 2" in p.stats_html.value


def test_notices_show_in_the_status_line(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=1, status=None))
    bus.publish(Notice(level="warning", message="worker w3 joined; rescaling"))
    assert _eventually(lambda: "worker w3 joined; rescaling" in p.status_html.value)


def test_panel_made_after_the_run_shows_the_final_state(bus: EventBus,
                                                         panels: list[TrainingPanel]) -> None:
    events = run_events(epochs=3, max_epochs=3, grow_at=3)
    _publish(bus, events)
    p = _panel(bus, panels, events=events)
    assert (p.epoch_bar.value, p.epoch_bar.max) == (3, 3)
    assert _polylines(p.charts_html.value, "scalekit-loss-chart") == {
        "train_loss": 3, "valid_loss": 3}
    assert p.table_html.value.count("scalekit-epoch-row") == 3
    assert "finished" in p.status_html.value
    assert "2 → 3 after epoch 2" in p.stats_html.value
    assert p.renders == 1 and p._unsubscribe is None


def test_replayed_events_are_not_folded_twice(bus: EventBus,
                                              panels: list[TrainingPanel]) -> None:
    events = run_events(epochs=2, max_epochs=4, status=None)
    _publish(bus, events)
    p = _panel(bus, panels, events=events)
    for e in events:  # the same objects delivered live again change nothing
        p._on_event(e)
    assert len(p.state.rows) == 2 and p.state.version == 2


def test_batch_flood_is_throttled(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.3)
    _publish(bus, run_events(epochs=1, max_epochs=3, status=None))
    before = p.renders
    n, started = 2000, time.monotonic()
    for i in range(1, n + 1):
        bus.publish(BatchProgress(run_id="run-1", epoch=1, batch=i, n_batches=n,
                                  samples_per_s=float(i)))
    took = time.monotonic() - started
    assert p.renders - before <= 2 + took / 0.3
    assert _eventually(lambda: p.batch_bar.value == n)  # the trailing redraw
    assert "samples/s" in p.stats_html.value and "2,000 samples/s" not in p.stats_html.value
    assert p.renders - before <= 3 + (time.monotonic() - started) / 0.3


def test_epoch_end_redraws_at_once(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=1, max_epochs=3, status=None))
    time.sleep(0.1)
    bus.publish(EpochEnded(run_id="run-1", epoch=2, row={"train_loss": 0.4, "dur": 1.0},
                           world_size=2))
    assert p.table_html.value.count("scalekit-epoch-row") == 2


def test_events_from_another_thread(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    t = threading.Thread(target=_publish, args=(bus, run_events(epochs=3, max_epochs=3)))
    t.start()
    t.join()
    assert p.epoch_bar.value == 3 and p.state.status == "finished"


def test_mimebundle_has_widget_and_fallbacks(bus: EventBus,
                                             panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    _publish(bus, run_events(epochs=2, status=None))
    data = p._repr_mimebundle_()
    assert data[WIDGET_VIEW]["model_id"] == p.widget.model_id
    assert data["text/plain"].startswith("scalekit training · run run-1 · running")
    assert 'class="scalekit-training"' in data["text/html"]
    assert "scalekit-loss-chart" in data["text/html"]
    assert set(p._repr_mimebundle_(include={"text/plain"})) == {"text/plain"}
    assert WIDGET_VIEW not in p._repr_mimebundle_(exclude={WIDGET_VIEW})
    p.close()
    assert set(p._repr_mimebundle_()) == {"text/plain", "text/html"}


def test_css_classes_for_the_browser(bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    assert "scalekit-training-panel" in p.widget._dom_classes
    assert "scalekit-epoch-progress" in p.epoch_box._dom_classes
    assert "scalekit-training-status" in p.status_html._dom_classes
    assert "scalekit-training-timeline" in p.events_html._dom_classes


def test_close_unsubscribes_and_stops_drawing(bus: EventBus,
                                              panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    p.close()
    p.close()
    bus.publish(RunFinished(run_id="run-1", status="finished", epochs=0))
    assert p.disposed and p.state.status == "waiting"


# --- timeline: resizes, failures, recoveries, checkpoints ---------------------------------


def test_live_elastic_run_shows_its_timeline(bus: EventBus,
                                             panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, elastic_events())
    events = p.events_html.value
    assert '<svg class="scalekit-world-chart"' in events
    assert events.count("scalekit-marker-resize") == 1
    assert events.count("scalekit-marker-recovery") == 1
    assert events.count("scalekit-tick-checkpoint") == 3
    assert "last checkpoint: in epoch 4 (step 5) · saved " in events
    assert "recoveries: 1 · downtime 4.5 s · lost 10 steps" in events
    assert events.count("scalekit-timeline-entry") == 5  # 2 checkpoints in a row: 1 line
    assert "3 → 2 after epoch 3" in p.stats_html.value
    assert p.table_html.value.count("scalekit-epoch-row") == 4


def test_resize_and_recovery_redraw_at_once(bus: EventBus,
                                            panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=60.0)
    _publish(bus, run_events(epochs=3, max_epochs=6, status=None))
    bus.publish(CheckpointSaved(run_id="run-1", epoch=3, step=0, url="file:///c",
                                seconds=0.5))
    assert "scalekit-checkpoint-line" not in p.events_html.value  # throttled
    bus.publish(Resized(run_id="run-1", old=2, new=3, epoch=3, reason="workers joined"))
    assert "scalekit-marker-resize" in p.events_html.value
    assert "last checkpoint: after epoch 3 · saved " in p.events_html.value
    assert " in 500 ms · file:///c" in p.events_html.value
    bus.publish(BatchProgress(run_id="run-1", epoch=3, batch=1, n_batches=9,
                              samples_per_s=1.0))
    bus.publish(Recovered(run_id="run-1", reason="rank 1 lost", epoch=1, step=0,
                          world_size=2, lost_steps=19, downtime_s=2.0))
    assert "scalekit-marker-recovery" in p.events_html.value
    assert "recoveries: 1 · downtime 2.0 s · lost 19 steps" in p.events_html.value
    assert p.table_html.value.count("scalekit-epoch-row") == 1  # epochs 2-3 are redone
    assert "epoch 1/6" in p.epoch_label.value


def test_timeline_is_not_redrawn_for_batches(bus: EventBus, panels: list[TrainingPanel],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = timeline_render.events_html
    monkeypatch.setattr(timeline_render, "events_html",
                        lambda s: calls.append(s) or real(s))
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, run_events(epochs=1, max_epochs=3, status=None))
    before = len(calls)
    for i in range(1, 6):
        bus.publish(BatchProgress(run_id="run-1", epoch=1, batch=i, n_batches=5,
                                  samples_per_s=1.0))
    assert p.batch_bar.value == 5 and len(calls) == before
    bus.publish(CheckpointSaved(run_id="run-1", epoch=1, step=5, url="u", seconds=1.0))
    assert len(calls) == before + 1


def test_panel_made_after_an_elastic_run_shows_the_timeline(
    bus: EventBus, panels: list[TrainingPanel]
) -> None:
    events = elastic_events(finished=True)
    p = _panel(bus, panels, events=events)
    assert p.renders == 1 and p._unsubscribe is None
    assert "scalekit-step-planned" not in p.events_html.value  # over: nothing planned
    assert "last checkpoint: in epoch 4 (step 5)" in p.events_html.value
    data = p._repr_mimebundle_()
    assert "recoveries: 1 · downtime 4.5 s · lost 10 steps" in data["text/plain"]
    assert "scalekit-world-chart" in data["text/html"]


def test_peak_gpu_memory_shows_when_the_report_arrives(bus: EventBus,
                                                       panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels)
    *events, finished = run_events(epochs=2, max_epochs=2)
    _publish(bus, events)
    assert "GPU" not in p.stats_html.value
    bus.publish(TrainingReport(run_id="run-1", strategy="ddp", world_size=2,
                               samples_per_s=900.0, peak_gpu_memory=(2**31, 3 * 2**30)))
    bus.publish(finished)  # urgent: draws at once, then the panel stops listening
    assert "peak GPU memory per rank 2.00, 3.00 GiB" in p.stats_html.get_state()["value"]


def test_redraws_are_capped_by_the_one_refresh_constant(bus: EventBus,
                                                         panels: list[TrainingPanel]) -> None:
    assert _panel(bus, panels).min_interval == MIN_REFRESH_S == 0.5


# --- readable and lasting -----------------------------------------------------------------


def test_a_finished_run_leaves_static_html_in_the_notebook(
        bus: EventBus, panels: list[TrainingPanel], displayed: list) -> None:
    p = _panel(bus, panels)
    p._ipython_display_()
    (handle,) = displayed
    assert WIDGET_VIEW in handle.shown  # live: the widget (and its HTML beside it)
    *events, finished = run_events(epochs=3, max_epochs=3)
    _publish(bus, events)
    assert handle.updates == []
    bus.publish(finished)
    (final,) = handle.updates
    assert set(final) == {"text/plain", "text/html"}  # reopened later: no lost widget
    assert "finished · 3 epochs" in final["text/html"] and "scalekit-loss-chart" in final[
        "text/html"]
    late = _panel(bus, panels, events=[*events, finished])  # made after the run
    late._ipython_display_()
    assert set(displayed[-1].shown) == {"text/plain", "text/html"} and late.final


def test_the_epoch_log_shows_the_last_rows_until_expanded(
        bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, run_events(epochs=4, max_epochs=12, status=None))
    assert p.table_toggle.layout.display == "none"  # nothing more to show
    _publish(bus, run_events(epochs=12, max_epochs=12, status=None)[-8:])
    assert p.table_html.value.count("scalekit-epoch-row") == 5
    assert "… 7 earlier epochs" in p.table_html.value
    assert p.table_toggle.layout.display == "flex"
    assert p.table_toggle.description == "all 12 epochs"
    p.table_toggle.value = True  # the user's click
    assert p.table_html.value.count("scalekit-epoch-row") == 12
    assert p.table_toggle.description == "last 5 epochs"


def test_the_loss_axis_can_be_switched_to_log(bus: EventBus,
                                              panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, run_events(epochs=4, max_epochs=8, status=None))
    assert 'data-scale="linear"' in p.charts_html.value  # auto: fell 4x only
    p.loss_scale.value = "log"
    assert re.search(r'class="scalekit-loss-chart" data-scale="log"', p.charts_html.value)
    assert 'data-scale="linear"' in p.charts_html.value  # the score chart stays linear


def test_a_recovery_shows_one_failure_and_clears_when_training_goes_on(
        bus: EventBus, panels: list[TrainingPanel]) -> None:
    p = _panel(bus, panels, min_interval=0.0)
    _publish(bus, run_events(epochs=2, max_epochs=6, world=3, status=None))
    for rank in (0, 2, 1):
        bus.publish(RankStatus(run_id="run-1", rank=rank, worker=f"w{rank}", state="failed"))
    bus.publish(Notice(level="warning",
                       message="recovering: rank 1 lost on w1; restoring on 2 worker(s)"))
    status = p.status_html.value
    assert status.count("scalekit-incident") == 1
    assert "rank 1 on w1 lost (generation 0) · ranks 0, 2 stopped with it" in status
    assert "recovering: rank 1 lost" in status
    assert p.ranks_html.value.count("scalekit-rank-aborted") == 2
    bus.publish(Recovered(run_id="run-1", reason="rank 1 lost on w1", epoch=2, step=0,
                          world_size=2, lost_steps=3, downtime_s=0.152))
    for rank in (0, 1):
        bus.publish(RankStatus(run_id="run-1", rank=rank, worker=f"w{rank}",
                               state="training", generation=1))
    assert "scalekit-incident" not in p.status_html.value
    assert "recovering" not in p.status_html.value
    assert p.ranks_html.value.count("scalekit-rank-training") == 2
    assert p.events_html.value.count("scalekit-timeline-failure") == 1
    assert "downtime 152 ms" in p.events_html.value


def test_shard_progress_shows_per_rank_in_the_data_row(bus: EventBus,
                                                       panels: list[TrainingPanel]) -> None:
    from scalekit.events import RunStarted, ShardProgress

    p = _panel(bus, panels, min_interval=0.0)
    assert p.data_html.value == ""  # nothing before a sharded run starts
    assert "scalekit-training-data" in p.data_html._dom_classes
    bus.publish(RunStarted(run_id="run-1", max_epochs=2, batch_size=64, n_samples=800,
                           world_size=2, sampling="sharded", n_shards=8, data_bytes=2**20))
    for rank, done in ((0, 1), (1, 3)):
        bus.publish(ShardProgress(run_id="run-1", rank=rank, worker=f"w{rank}", epoch=0,
                                  shards_done=done, shards_total=4, rows_done=100 * done,
                                  rows_total=400))
    assert _eventually(lambda: "rank 1: 3/4 shards" in p.data_html.value)
    assert "rank 0: 1/4 shards" in p.data_html.value
    assert "data: sharded · 8 shards, 1.0 MiB" in p.data_html.value
