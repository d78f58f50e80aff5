"""Small inline SVG charts, pure strings (no ipywidgets).

:func:`line_chart_svg` draws the epoch curves (losses, scores) of the training panel;
:func:`step_chart_svg` draws a value that holds until it changes (the world size over
epochs) with markers at events and ticks on the x axis. Both draw their axes with
:mod:`scalekit.views.axes`: round tick values, and one x axis for charts stacked with
the same width and range. Every name and title is escaped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from scalekit.views.axes import Frame, fmt_tick, log_ticks, nice_ticks
from scalekit.views.html import PALETTE, escape

__all__ = ["PALETTE", "Marker", "line_chart_svg", "step_chart_svg"]


def _y_bounds(values: Sequence[float], y_range: tuple[float, float] | None
              ) -> tuple[float, float]:
    if y_range is not None:
        return float(y_range[0]), float(y_range[1])
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    # losses and scores are not negative: keep the axis from dipping below zero
    return (max(lo, 0.0) if lo >= 0 else lo), hi


def _log_bounds(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi / lo < 1.5:  # less than a factor: widen to a readable range
        return lo / 1.5, hi * 1.5
    return lo / 1.1, hi * 1.1


def line_chart_svg(
    series: Mapping[str, Sequence[float | None]],
    width: int = 360,
    height: int = 150,
    *,
    y_range: tuple[float, float] | None = None,
    colors: Mapping[str, str] | None = None,
    x_start: int = 1,
    x_range: tuple[float, float] | None = None,
    log: bool = False,
    x_labels: bool = True,
    css_class: str = "scalekit-line-chart",
    x_label: str = "epoch",
) -> str:
    """An inline SVG line chart: one ``<polyline>`` per series, legend, ticked axes.

    Parameters
    ----------
    series : mapping of str to sequence of float or None
        Name to values, one per x position (epoch ``x_start``, ``x_start + 1``, ...);
        ``None`` or NaN values are skipped (and, on a log axis, values <= 0), so a
        series has as many points as such values. Series without any are left out.
    width, height : int
        Size of the picture in pixels.
    y_range : (float, float), optional
        Fixed y axis (e.g. ``(0, 1)`` for accuracies); by default round values around
        the data's range.
    colors : mapping of str to str, optional
        CSS colour per series name; others take the next colour of :data:`PALETTE`.
    x_start : int
        The x value of the first position.
    x_range : (float, float), optional
        The x axis; by default the positions'. Give charts stacked in one panel the
        same range (and width) and their x axes line up.
    log : bool
        A logarithmic y axis (ticks at 1, 2, 5 x 10^k): losses that fall by orders of
        magnitude stay readable after the first epochs.
    x_labels : bool
        Write the x ticks' values and the axis name (off for a chart whose x axis is
        labelled by the chart below it).
    css_class : str
        Class of the ``<svg>`` element.
    x_label : str
        Word under the x axis.

    Returns
    -------
    str
        An ``<svg>`` element (names and labels escaped); it carries ``data-scale``
        (``linear`` or ``log``).
    """
    frame = Frame(width, height, css_class)
    left, top, plot_w, plot_h = frame.left, frame.top, frame.plot_w, frame.plot_h
    finite = {
        name: [(x_start + i, float(v)) for i, v in enumerate(values)
               if v is not None and math.isfinite(float(v)) and (not log or float(v) > 0)]
        for name, values in series.items()
    }
    finite = {name: pts for name, pts in finite.items() if pts}
    if not finite:
        return frame.waiting("waiting for the first epoch")
    values = [v for pts in finite.values() for _, v in pts]
    xs = [x for pts in finite.values() for x, _ in pts]
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    if log:
        lo, hi = _log_bounds(values)
        y_ticks = log_ticks(lo, hi)
        to_y = math.log10
    else:
        y_ticks = nice_ticks(*_y_bounds(values, y_range), 6)
        lo, hi = (y_range if y_range is not None else (y_ticks[0], y_ticks[-1]))
        y_ticks = [t for t in y_ticks if lo <= t <= hi]

        def to_y(v: float) -> float:
            return v
    y_lo, y_hi = to_y(lo), to_y(hi)

    def px(x: float) -> float:
        return left + (min(max(x, x0), x1) - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        frac = (min(max(to_y(v), y_lo), y_hi) - y_lo) / (y_hi - y_lo) if y_hi > y_lo else 0.5
        return top + plot_h - frac * plot_h

    parts = [
        *frame.y_axis(y_ticks, py),
        *frame.x_axis(nice_ticks(x0, x1, 6, integer=True), px, x_label, labels=x_labels),
    ]
    legend_x = left
    for k, (name, pts) in enumerate(finite.items()):
        color = escape((colors or {}).get(name, PALETTE[k % len(PALETTE)]))
        points = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in pts)
        parts.append(
            f'<polyline class="scalekit-series" data-series="{escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="1.5" points="{points}">'
            f"<title>{escape(name)}: {fmt_tick(pts[-1][1])}</title></polyline>"
        )
        if len(pts) == 1:
            parts.append(f'<circle cx="{px(pts[0][0]):.1f}" cy="{py(pts[0][1]):.1f}" r="2.5" '
                         f'fill="{color}"/>')
        parts.append(f'<text x="{legend_x:.0f}" y="11" fill="{color}">■ {escape(name)}</text>')
        legend_x += 6.5 * len(name) + 22
    scale = "log" if log else "linear"
    if log:
        parts.append(f'<text x="{left + plot_w}" y="11" text-anchor="end" fill="#888">'
                     "log scale</text>")
    head = frame.head.replace(" xmlns=", f' data-scale="{scale}" xmlns=', 1)
    return f'{head}{"".join(parts)}</svg>'


def _count_ticks(hi: float) -> list[float]:
    """0, the top and round counts between (every count up to 4)."""
    if hi <= 4:
        return [float(n) for n in range(int(hi) + 1)]
    return sorted({0.0, float(hi), *(t for t in nice_ticks(0.0, hi, 3, integer=True) if t < hi)})


@dataclasses.dataclass(frozen=True)
class Marker:
    """A point on a step chart: a dot (``tick=False``) or a tick on the x axis."""

    x: float
    y: float
    color: str
    kind: str
    title: str
    tick: bool = False


def step_chart_svg(
    steps: Sequence[tuple[float, float]],
    x_range: tuple[float, float],
    markers: Sequence[Marker] = (),
    width: int = 360,
    height: int = 100,
    *,
    solid_until: float | None = None,
    planned: bool = False,
    color: str = "#444",
    title: str = "",
    css_class: str = "scalekit-step-chart",
    x_label: str = "epoch",
) -> str:
    """An inline SVG of a value that holds until it changes, with event markers.

    Parameters
    ----------
    steps : sequence of (float, float)
        ``(x, value)``, x ascending: ``value`` holds from ``x`` to the next step's x.
    x_range : (float, float)
        The x axis; the y axis runs from 0 to the largest value.
    markers : sequence of Marker
        Dots (class ``scalekit-marker scalekit-marker-<kind>``) and x-axis ticks (class
        ``scalekit-tick scalekit-tick-<kind>``; one per pixel column, the last wins),
        each with its title as a tooltip; a legend names the kinds.
    width, height : int
        Size of the picture in pixels.
    solid_until : float, optional
        Where the line ends (the progress so far); by default the end of the x axis.
    planned : bool
        Continue the last value, dashed, from ``solid_until`` to the end of the axis.
    color : str
        CSS colour of the line.
    title : str
        Legend text above the plot.
    css_class : str
        Class of the ``<svg>`` element.
    x_label : str
        Word under the x axis.

    Returns
    -------
    str
        An ``<svg>`` element (titles and labels escaped).
    """
    frame = Frame(width, height, css_class)
    left, top, plot_w, plot_h = frame.left, frame.top, frame.plot_w, frame.plot_h
    legend = f'<text x="{left}" y="11" fill="#555">{escape(title)}</text>' if title else ""
    if not steps:
        return frame.waiting("waiting for the run to start", before=legend)
    x0, x1 = float(x_range[0]), float(x_range[1])
    if x1 <= x0:
        x1 = x0 + 1.0
    hi = max(max(v for _, v in steps), max((m.y for m in markers), default=0.0), 1.0)

    def px(x: float) -> float:
        return left + (min(max(x, x0), x1) - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return top + plot_h - min(max(v, 0.0), hi) / hi * plot_h

    base = top + plot_h
    end = x1 if solid_until is None else max(min(solid_until, x1), steps[-1][0], x0)
    points: list[str] = []
    for i, (x, v) in enumerate(steps):
        if i:
            points.append(f"{px(x):.1f},{py(steps[i - 1][1]):.1f}")
        points.append(f"{px(x):.1f},{py(v):.1f}")
    last = steps[-1][1]
    points.append(f"{px(end):.1f},{py(last):.1f}")
    parts = [
        legend,
        *frame.y_axis(_count_ticks(hi), py),
        *frame.x_axis(nice_ticks(x0, x1, 6, integer=True), px, x_label),
        f'<polyline class="scalekit-step-line" fill="none" stroke="{escape(color)}" '
        f'stroke-width="1.5" points="{" ".join(points)}"><title>{escape(title)}: '
        f"{fmt_tick(last)}</title></polyline>",
    ]
    if planned and end < x1:
        parts.append(
            f'<line class="scalekit-step-planned" x1="{px(end):.1f}" y1="{py(last):.1f}" '
            f'x2="{px(x1):.1f}" y2="{py(last):.1f}" stroke="{escape(color)}" '
            'stroke-opacity="0.4" stroke-dasharray="3,3"/>'
        )
    kinds = {m.kind: m for m in markers}  # a legend, right-aligned, in first-seen order
    legend_x = left + plot_w
    for m in reversed(kinds.values()):
        parts.append(f'<text x="{legend_x:.0f}" y="11" text-anchor="end" '
                     f'fill="{escape(m.color)}">{"|" if m.tick else "●"} {escape(m.kind)}</text>')
        legend_x -= 6.0 * len(m.kind) + 16
    ticks = {round(px(m.x)): m for m in markers if m.tick}
    for x, m in ticks.items():
        parts.append(
            f'<line class="scalekit-tick scalekit-tick-{escape(m.kind)}" x1="{x}" '
            f'y1="{base - 4}" x2="{x}" y2="{base + 4}" stroke="{escape(m.color)}" '
            f'stroke-width="1.5"><title>{escape(m.title)}</title></line>'
        )
    for m in markers:
        if not m.tick:
            parts.append(
                f'<circle class="scalekit-marker scalekit-marker-{escape(m.kind)}" '
                f'cx="{px(m.x):.1f}" cy="{py(m.y):.1f}" r="3.5" fill="{escape(m.color)}" '
                f'stroke="#fff"><title>{escape(m.title)}</title></circle>'
            )
    return f'{frame.head}{"".join(parts)}</svg>'
