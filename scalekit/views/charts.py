"""Small inline SVG charts, pure strings (no ipywidgets).

:func:`line_chart_svg` draws the epoch curves (losses, scores) of the training panel;
:func:`step_chart_svg` draws a value that holds until it changes (the world size over
epochs) with markers at events and ticks on the x axis. Every name and title is escaped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from scalekit.views.html import PALETTE, escape

__all__ = ["PALETTE", "Marker", "line_chart_svg", "step_chart_svg"]


def _tick(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def _y_bounds(values: Sequence[float], y_range: tuple[float, float] | None) -> tuple[float, float]:
    if y_range is not None:
        return float(y_range[0]), float(y_range[1])
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    # losses and scores are not negative: keep the axis from dipping below zero
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The picture both charts share: an ``<svg>`` head, a plot area inside margins
    that leave room for the y labels (left), the legend (top) and the x labels (bottom)."""

    width: float
    height: float
    css_class: str
    left: float = 44.0
    right: float = 8.0
    top: float = 16.0
    bottom: float = 18.0

    @property
    def plot_w(self) -> float:
        return max(self.width - self.left - self.right, 1.0)

    @property
    def plot_h(self) -> float:
        return max(self.height - self.top - self.bottom, 1.0)

    @property
    def head(self) -> str:
        w, h = int(self.width), int(self.height)
        return (f'<svg class="{escape(self.css_class)}" xmlns="http://www.w3.org/2000/svg" '
                f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                'style="background:#fafafa;border:1px solid #ddd;font:10px sans-serif">')

    def waiting(self, text: str, before: str = "") -> str:
        """The whole picture while there is nothing to draw yet."""
        return (f'{self.head}{before}<text x="{self.width / 2:.0f}" y="{self.height / 2:.0f}" '
                f'text-anchor="middle" fill="#888">{escape(text)}</text></svg>')

    def axes(self, y_hi: str, y_lo: str, x_first: str, x_last: str | None,
             x_label: str) -> list[str]:
        """Base line and the labels: y range on the left, x range and name below."""
        left, top = self.left, self.top
        base, right, y = top + self.plot_h, left + self.plot_w, self.height - 4
        parts = [
            f'<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#bbb"/>',
            f'<text x="{left - 3}" y="{top + 4}" text-anchor="end" fill="#555">{y_hi}</text>',
            f'<text x="{left - 3}" y="{base}" text-anchor="end" fill="#555">{y_lo}</text>',
            f'<text x="{left}" y="{y}" fill="#555">{x_first}</text>',
            f'<text x="{left + self.plot_w / 2}" y="{y}" text-anchor="middle" fill="#888">'
            f"{escape(x_label)}</text>",
        ]
        if x_last is not None:
            parts.append(f'<text x="{right}" y="{y}" text-anchor="end" fill="#555">{x_last}</text>')
        return parts


def line_chart_svg(
    series: Mapping[str, Sequence[float | None]],
    width: int = 360,
    height: int = 150,
    *,
    y_range: tuple[float, float] | None = None,
    colors: Mapping[str, str] | None = None,
    x_start: int = 1,
    css_class: str = "scalekit-line-chart",
    x_label: str = "epoch",
) -> str:
    """An inline SVG line chart: one ``<polyline>`` per series, legend and axis labels.

    Parameters
    ----------
    series : mapping of str to sequence of float or None
        Name to values, one per x position (epoch); ``None`` or NaN values are skipped,
        so a series has as many points as finite values. Series without any are left out.
    width, height : int
        Size of the picture in pixels.
    y_range : (float, float), optional
        Fixed y axis (e.g. ``(0, 1)`` for accuracies); by default the data's range.
    colors : mapping of str to str, optional
        CSS colour per series name; others take the next colour of :data:`PALETTE`.
    x_start : int
        The x value of the first position (the axis shows first and last).
    css_class : str
        Class of the ``<svg>`` element.
    x_label : str
        Word under the x axis.

    Returns
    -------
    str
        An ``<svg>`` element (names and labels escaped).
    """
    frame = _Frame(width, height, css_class)
    left, top, plot_w, plot_h = frame.left, frame.top, frame.plot_w, frame.plot_h
    finite = {
        name: [(i, float(v)) for i, v in enumerate(values)
               if v is not None and math.isfinite(float(v))]
        for name, values in series.items()
    }
    finite = {name: pts for name, pts in finite.items() if pts}
    n = max((len(values) for values in series.values()), default=0)
    if not finite:
        return frame.waiting("waiting for the first epoch")
    lo, hi = _y_bounds([v for pts in finite.values() for _, v in pts], y_range)

    def xy(i: int, v: float) -> str:
        x = left + (i / (n - 1) * plot_w if n > 1 else plot_w / 2)
        frac = (min(max(v, lo), hi) - lo) / (hi - lo) if hi > lo else 0.5
        return f"{x:.1f},{top + plot_h - frac * plot_h:.1f}"

    parts = [
        f'<line x1="{left}" y1="{top}" x2="{left + plot_w}" y2="{top}" stroke="#e0e0e0"/>',
        *frame.axes(_tick(hi), _tick(lo), str(int(x_start)),
                    str(int(x_start) + n - 1) if n > 1 else None, x_label),
    ]
    legend_x = left
    for k, (name, pts) in enumerate(finite.items()):
        color = escape((colors or {}).get(name, PALETTE[k % len(PALETTE)]))
        points = " ".join(xy(i, v) for i, v in pts)
        parts.append(
            f'<polyline class="scalekit-series" data-series="{escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="1.5" points="{points}">'
            f"<title>{escape(name)}: {_tick(pts[-1][1])}</title></polyline>"
        )
        if len(pts) == 1:
            x, y = xy(*pts[0]).split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
        parts.append(f'<text x="{legend_x:.0f}" y="11" fill="{color}">■ {escape(name)}</text>')
        legend_x += 6.5 * len(name) + 22
    return f'{frame.head}{"".join(parts)}</svg>'


def _num(value: float) -> str:
    """Whole numbers in full (``1000``, not ``1e+03``), others as :func:`_tick`."""
    return f"{value:.0f}" if float(value).is_integer() else _tick(value)


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
    frame = _Frame(width, height, css_class)
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
        *frame.axes(_num(hi), "0", _num(x0), _num(x1), x_label),
        f'<polyline class="scalekit-step-line" fill="none" stroke="{escape(color)}" '
        f'stroke-width="1.5" points="{" ".join(points)}"><title>{escape(title)}: '
        f"{_num(last)}</title></polyline>",
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
