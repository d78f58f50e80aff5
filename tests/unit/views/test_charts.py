"""The SVG line chart of the training panel (losses, scores)."""

from __future__ import annotations

import re

from scalekit.views.charts import line_chart_svg


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
