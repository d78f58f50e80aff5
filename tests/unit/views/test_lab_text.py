"""The sidebar's words come from the kernel, made with the panels' own functions."""

from __future__ import annotations

import re

from scalekit.events import Recovered, Resized
from scalekit.views import training_render
from scalekit.views.lab_text import fmt_loss, run_view
from scalekit.views.snapshot import run_dict
from scalekit.views.timeline_render import events_html
from scalekit.views.training_state import TrainingState

from .training_events import run_events


def _grown_and_recovered() -> TrainingState:
    s = TrainingState.from_events(run_events(epochs=20, max_epochs=30, status=None))
    s.apply(Resized(run_id="run-1", old=2, new=3, epoch=18, reason="workers joined"))
    s.apply(Recovered(run_id="run-1", reason="rank 2 lost", epoch=18, step=0, world_size=3,
                      lost_steps=7, downtime_s=0.152))
    return s


def test_panel_and_sidebar_say_the_same_downtime_and_resize_epoch() -> None:
    s = _grown_and_recovered()
    panel = training_render.state_html(s) + events_html(s)
    sidebar = " | ".join(run_view(s)["details"])
    for words in ("downtime 152 ms", "2 → 3 after epoch 18"):
        assert words in panel and words in sidebar, words
    assert "at epoch 19" not in panel + sidebar and "0 s down" not in sidebar
    assert "after epoch 18 · world size 2 → 3" in panel  # the timeline says the same


def test_run_dict_carries_the_view_strings() -> None:
    view = run_dict(TrainingState.from_events(run_events(epochs=2, max_epochs=5)))["view"]
    assert view["status_bar"] == "epoch 2/5 · loss 0.500"
    assert view["headline"] == "epoch 2/5 · loss 0.500 · valid 0.600"
    assert view["details"][-2:] == ["no checkpoint yet", "no recoveries"]
    assert view["alerts"] == []


def test_losses_in_little_room() -> None:
    assert [fmt_loss(v) for v in (0.41234, 1.0, 12.34, 123.4, 3.2e-5, 12345.0, None)] == [
        "0.412", "1.00", "12.3", "123", "3.20e-05", "1.23e+04", "–"]


def test_epoch_table_shows_the_last_rows_and_an_expander() -> None:
    s = TrainingState.from_events(run_events(epochs=12, max_epochs=12))
    html = training_render.epoch_table_html(s)
    short, _, full = html.partition('<details class="scalekit-epoch-more"')
    assert short.count('class="scalekit-epoch-row"') == training_render.TABLE_ROWS == 5
    assert "… 7 earlier epochs" in short and "all 12 epochs</summary>" in full
    assert full.count('class="scalekit-epoch-row"') == 12
    live = training_render.epoch_table_html(s, None, expander=False)  # the panel's "all"
    assert live.count('class="scalekit-epoch-row"') == 12 and "<details" not in live


def test_loss_chart_scale_auto_turns_log_when_the_loss_falls_tenfold() -> None:
    s = TrainingState.from_events(run_events(epochs=4, max_epochs=4))  # 1 → 0.25: linear
    assert 'data-scale="linear"' in training_render.charts_html(s)
    assert 'data-scale="log"' in training_render.charts_html(s, "log")
    s = TrainingState.from_events(run_events(epochs=12, max_epochs=12))  # 1 → 0.083
    assert training_render.use_log_scale(s) and not training_render.use_log_scale(s, "linear")
    loss = re.search(r'<svg class="scalekit-loss-chart"[^>]*>', training_render.charts_html(s))
    assert loss is not None and 'data-scale="log"' in loss.group(0)
