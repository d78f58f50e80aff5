"""The timeline renderers: world-size step chart, checkpoint/recovery lines, event list."""

from __future__ import annotations

import re
import time

from scalekit.events import BatchProgress, Recovered, Resized
from scalekit.views import timeline_render
from scalekit.views.charts import Marker, step_chart_svg
from scalekit.views.html import CPU_COLOR, DANGER_COLOR
from scalekit.views.training_render import training_html, training_text
from scalekit.views.training_state import TrainingState

from .training_events import elastic_events, run_events


def _state(**kw: bool) -> TrainingState:
    return TrainingState.from_events(elastic_events(**kw))


def _markers(svg: str, kind: str) -> list[tuple[float, float, str]]:
    """``(cx, cy, fill)`` of each dot of ``kind``."""
    found = re.findall(rf'<circle class="scalekit-marker scalekit-marker-{kind}" '
                       r'cx="([\d.]+)" cy="([\d.]+)" r="[\d.]+" fill="([^"]+)"', svg)
    return [(float(x), float(y), fill) for x, y, fill in found]


def _ticks(svg: str, kind: str = "checkpoint") -> list[float]:
    return [float(x) for x in re.findall(rf'class="scalekit-tick scalekit-tick-{kind}" '
                                         r'x1="([\d.]+)"', svg)]


def test_checkpoint_and_recoveries_lines() -> None:
    s = _state()
    clock = time.strftime("%H:%M:%S", time.localtime(1_036.0))  # the checkpoint's time
    assert timeline_render.checkpoint_text(s) == (
        f"last checkpoint: in epoch 4 (step 5) · saved {clock} in 12 ms · file:///ck/3-5")
    assert timeline_render.recoveries_text(s) == (
        "recoveries: 1 · downtime 4.5 s · lost 10 steps")
    plain = TrainingState.from_events(run_events(epochs=2))
    assert timeline_render.checkpoint_text(plain) == ""
    assert timeline_render.recoveries_text(plain) == ""


def test_timeline_lines_newest_first_repeats_folded() -> None:
    lines = timeline_render.timeline_lines(_state())
    # the two checkpoints in a row (after epoch 3, in epoch 4) are one line
    assert [line.split()[1] for line in lines] == [
        "recovery", "failure", "checkpoint", "resize", "checkpoint"]
    assert lines[0].endswith("recovery    in epoch 4 (step 5) · recovered on 2 ranks · "
                             "lost 10 steps · down 4.5 s · rank 2 lost")
    assert lines[2].endswith("checkpoint  in epoch 4 (step 5) · checkpoint saved in 12 ms "
                             "(3.0 MiB) · 2 saved, epochs 3–3")
    # a small limit leaves out routine lines only: the story stays
    short = timeline_render.timeline_lines(_state(), limit=1)
    assert [line.split()[1] for line in short[:-1]] == ["recovery", "failure", "resize"]
    assert short[-1] == "… 2 earlier routine lines (checkpoints)"


def test_world_chart_steps_markers_and_ticks() -> None:
    svg = timeline_render.world_chart_svg(_state())
    assert svg.startswith('<svg class="scalekit-world-chart"')
    assert "world size over epochs" in svg
    (resize,) = _markers(svg, "resize")
    (recovery,) = _markers(svg, "recovery")
    assert resize[2] == CPU_COLOR and recovery[2] == DANGER_COLOR
    assert resize[0] < recovery[0]  # epoch 2 before epoch 3 (step 5)
    assert resize[1] < recovery[1]  # 3 ranks drawn higher than 2
    ticks = _ticks(svg)
    assert len(ticks) == 3 and ticks == sorted(ticks)  # epochs 1, 3 and 3.5
    assert abs((ticks[2] - ticks[1]) - (ticks[1] - ticks[0]) / 4) <= 1  # half an epoch
    line = re.search(r'class="scalekit-step-line"[^>]*points="([^"]+)"', svg)
    assert line is not None
    ys = [float(p.split(",")[1]) for p in line[1].split()]
    assert len(set(ys)) == 2 and ys[0] == ys[-1]  # 2 → 3 → 2 ranks
    assert "scalekit-step-planned" in svg  # running: dashed on to max_epochs
    assert "<title>after epoch 2: world size 2 → 3 · workers joined</title>" in svg


def test_world_chart_of_a_finished_run_has_no_planned_part() -> None:
    svg = timeline_render.world_chart_svg(_state(finished=True))
    assert "scalekit-step-planned" not in svg
    assert ">6<" in svg and ">0<" in svg  # x axis: epochs 0..6


def test_markers_move_inside_the_epoch_once_batches_are_known() -> None:
    s = TrainingState.from_events(run_events(epochs=2, max_epochs=4, status=None))
    s.apply(Recovered(run_id="run-1", reason="x", epoch=1, step=3, world_size=0))
    (marker,) = _markers(timeline_render.world_chart_svg(s), "recovery")
    s.apply(BatchProgress(run_id="run-1", epoch=1, batch=1, n_batches=6, samples_per_s=1.0))
    (later,) = _markers(timeline_render.world_chart_svg(s), "recovery")
    assert later[0] > marker[0]  # with 6 batches per epoch: half an epoch further
    assert later[1] == marker[1]  # at the world size of the epoch it resumed in


def test_chart_titles_are_escaped() -> None:
    s = TrainingState.from_events(run_events(epochs=1, status=None))
    s.apply(Resized(run_id="run-1", old=2, new=3, epoch=1, reason="<script>x</script>"))
    html = timeline_render.events_html(s)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_step_chart_edges() -> None:
    assert "waiting for the run to start" in step_chart_svg([], (0, 1))
    svg = step_chart_svg([(0.0, 1.0)], (5.0, 5.0), [
        Marker(5.0, 0.0, "#0f0", "checkpoint", "a", tick=True),
        Marker(5.001, 0.0, "#0f0", "checkpoint", "b", tick=True),
    ], title="t", css_class="x")
    assert svg.startswith('<svg class="x"')
    assert svg.count("scalekit-tick-checkpoint") == 1 and "<title>b</title>" in svg
    assert ">5<" in svg and ">6<" in svg  # an empty x range widens to one epoch
    assert "| checkpoint" in svg  # the legend


def test_timeline_html_list() -> None:
    html = timeline_render.timeline_html(_state(), limit=4)
    assert html.startswith('<ul class="scalekit-timeline"')
    kinds = re.findall(r'class="scalekit-timeline-entry scalekit-timeline-(\w+)', html)
    assert kinds == ["recovery", "failure", "checkpoint", "resize"]  # 4 lines in all
    assert html.count("scalekit-timeline-folded") == 1
    assert "… 1 earlier routine line (checkpoints)" in html
    assert timeline_render.timeline_html(TrainingState()) == ""


def test_events_html_has_all_parts() -> None:
    html = timeline_render.events_html(_state())
    for css in ("scalekit-training-events", "scalekit-world-chart", "scalekit-timeline",
                "scalekit-checkpoint-line", "scalekit-recoveries-line"):
        assert css in html
    assert "last checkpoint: in epoch 4 (step 5) · saved " in html
    assert timeline_render.events_html(TrainingState()) == ""
    plain = timeline_render.events_html(TrainingState.from_events(run_events(epochs=2)))
    assert "scalekit-world-chart" in plain and "scalekit-checkpoint-line" not in plain
    assert "scalekit-recoveries-line" not in plain and "scalekit-timeline" not in plain


def test_important_entries_are_never_left_out() -> None:
    s = TrainingState.from_events(run_events(epochs=1, status=None))
    for i in range(12):
        s.apply(Resized(run_id="run-1", old=2 + i, new=3 + i, epoch=1))
    html = timeline_render.timeline_html(s)
    assert html.count("scalekit-timeline-entry") == 12 and "earlier" not in html
    assert "world size 13 → 14" in html and "world size 2 → 3" in html


def test_text_and_html_fallbacks_include_the_timeline() -> None:
    text = training_text(elastic_events())
    assert "  last checkpoint: in epoch 4 (step 5) · saved " in text
    assert "  recoveries: 1 · downtime 4.5 s · lost 10 steps" in text
    assert "  timeline (newest first):" in text
    assert "world size 2 (2 → 3 after epoch 2, 3 → 2 after epoch 3)" in text
    assert text.index("timeline (newest first)") < text.index("train_loss")
    html = training_html(elastic_events())
    for css in ("scalekit-world-chart", "scalekit-timeline", "scalekit-checkpoint-line",
                "scalekit-loss-chart", "scalekit-epoch-table"):
        assert css in html
    assert html.index("scalekit-loss-chart") < html.index("scalekit-world-chart")
    assert "timeline" not in training_text(run_events(epochs=2))
