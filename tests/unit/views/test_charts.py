"""The SVG line chart of the training panel (losses, scores)."""

from __future__ import annotations

import re

from scalekit.views.axes import log_ticks, nice_ticks
from scalekit.views.charts import Marker, line_chart_svg, step_chart_svg


def _points(svg: str) -> dict[str, int]:
    found = re.findall(r'data-series="([^"]+)"[^>]*points="([^"]*)"', svg)
    return {name: len(points.split()) for name, points in found}


def test_line_chart_one_polyline_per_series() -> None:
    svg = line_chart_svg({"a": [3.0, 2.0, 1.0], "b": [None, 1.5, float("nan")],
                                 "c": []}, width=200, height=100, css_class="x-chart")
    assert svg.startswith('<svg class="x-chart"')
    assert svg.count("<polyline") == 2
    assert _points(svg) == {"a": 3, "b": 1}
    assert "<circle" in svg  # a single point still shows


def test_line_chart_fixed_range_and_escaping() -> None:
    svg = line_chart_svg({"<acc>": [0.5, 0.75]}, y_range=(0.0, 1.0), x_start=5)
    assert "&lt;acc&gt;" in svg and "<acc>" not in svg
    assert ">1<" in svg and ">0<" in svg and ">5<" in svg and ">6<" in svg
    ys = [float(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', svg)[1].split()]
    assert ys[0] > ys[1]  # higher values are drawn higher up


def test_line_chart_empty() -> None:
    assert "waiting for the first epoch" in line_chart_svg({})


def _y_ticks(svg: str) -> list[str]:
    return re.findall(r'class="scalekit-y-tick"[^>]*>([^<]+)<', svg)


def test_loss_axis_has_round_ticks_between_its_ends() -> None:
    svg = line_chart_svg({"train_loss": [2.3, 0.4, 0.2, 0.1, 0.08, 0.07]})
    assert _y_ticks(svg) == ["0", "0.5", "1", "1.5", "2", "2.5"]  # not just max and 0
    assert 'data-scale="linear"' in svg


def test_log_scale_spreads_a_falling_loss_over_the_height() -> None:
    values = [2.3, 0.4, 0.2, 0.1, 0.08, 0.07]
    linear, log = (line_chart_svg({"l": values}, log=flag) for flag in (False, True))
    assert 'data-scale="log"' in log and "log scale" in log
    assert _y_ticks(log) == ["0.1", "0.2", "0.5", "1", "2"]

    def spread(svg: str) -> float:  # pixels between the 3rd and the last point
        ys = [float(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', svg)[1].split()]
        return ys[-1] - ys[2]

    assert spread(log) > 3 * spread(linear)
    assert "waiting" in line_chart_svg({"l": [0.0, -1.0]}, log=True)  # nothing positive


def test_nice_ticks_and_log_ticks() -> None:
    assert nice_ticks(0, 20, 6, integer=True) == [0, 5, 10, 15, 20]
    assert nice_ticks(0, 4, 6, integer=True) == [0, 1, 2, 3, 4]
    assert nice_ticks(0.04, 2.3, 6) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert log_ticks(0.01, 3.0) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    assert log_ticks(0.001, 3.0) == [0.001, 0.01, 0.1, 1.0]  # past 3 decades: decades
    assert log_ticks(1e-6, 10.0) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]


def test_charts_with_one_x_range_put_an_epoch_at_the_same_pixel() -> None:
    """The loss chart shares the world-size chart's axis: epoch 3 sits at the same x."""
    loss = line_chart_svg({"l": [1.0, 0.5, 0.3]}, x_start=1, x_range=(0.0, 10.0))
    world = step_chart_svg([(0.0, 2.0)], (0.0, 10.0), [Marker(3.0, 2.0, "#00f", "resize", "r")])
    x_loss = float(re.search(r'points="([^"]+)"', loss)[1].split()[2].split(",")[0])
    x_world = float(re.search(r'scalekit-marker-resize" cx="([\d.]+)"', world)[1])
    assert x_loss == x_world
    assert re.findall(r'class="scalekit-x-tick"[^>]*>(\d+)<', world) == ["0", "2", "4", "6",
                                                                         "8", "10"]
