"""Axes of the inline SVG charts: tick values (linear, logarithmic) and the frame.

Shared by the loss chart, the world-size chart and the cluster's CPU/memory sparkline,
so that charts stacked in one panel draw the same x axis at the same pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from scalekit.views.html import escape

__all__ = ["Frame", "fmt_tick", "log_ticks", "nice_ticks"]

GRID = "#e6e6e6"
LABEL = "#555"


def fmt_tick(value: float) -> str:
    """A tick label: whole numbers in full, others with 3 significant digits."""
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{value:.0f}"
    return f"{value:.3g}" if 1e-4 <= abs(value) < 1e4 else f"{value:.1e}"


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round values covering ``lo..hi`` (steps of 1, 2, 2.5 or 5 x 10^k).

    The first tick is at or below ``lo``, the last at or above ``hi``, so the axis can
    run from one to the other. ``integer`` keeps steps whole (epochs).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    if integer:
        step = max(round(step), 1)
        if step not in (1, 2, 5) and step % 5:
            step = int(math.ceil(step / 5.0) * 5)
    start = math.floor(lo / step + 1e-9) * step
    count = int(math.ceil((hi - start) / step - 1e-9))
    return [round(start + i * step, 12) for i in range(count + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over ``lo..hi`` (both > 0): decades, with 2 and 5 between
    them when the range spans at most three decades; the range's ends when fewer than
    two ticks fall inside."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1.0, 2.0, 5.0) if math.log10(hi / lo) <= 3 else (1.0,)
    ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in steps]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return inside if len(inside) >= 2 else [lo, hi]


@dataclasses.dataclass(frozen=True)
class Frame:
    """The picture every chart shares: an ``<svg>`` head, a plot area inside margins
    that leave room for the y labels (left), the legend (top) and the x labels (bottom).
    Charts of one width put an x value at the same pixel: their axes line up."""

    width: float
    height: float
    css_class: str
    left: float = 44.0
    right: float = 10.0
    top: float = 16.0
    bottom: float = 18.0

    @property
    def plot_w(self) -> float:
        return max(self.width - self.left - self.right, 1.0)

    @property
    def plot_h(self) -> float:
        return max(self.height - self.top - self.bottom, 1.0)

    @property
    def base(self) -> float:
        return self.top + self.plot_h

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

    def y_axis(self, ticks: Sequence[float], py: Callable[[float], float],
               label: Callable[[float], str] = fmt_tick) -> list[str]:
        """A grid line and a label at each tick (class ``scalekit-y-tick``)."""
        parts = []
        right = self.left + self.plot_w
        for t in ticks:
            y = py(t)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
                         f'stroke="{GRID}"/>')
            parts.append(f'<text class="scalekit-y-tick" x="{self.left - 3}" y="{y + 3:.1f}" '
                         f'text-anchor="end" fill="{LABEL}">{escape(label(t))}</text>')
        return parts

    def x_axis(self, ticks: Sequence[float], px: Callable[[float], float],
               x_label: str, *, labels: bool = True) -> list[str]:
        """The base line, a mark at each tick and (``labels``) the tick values and the
        axis name below (class ``scalekit-x-tick``)."""
        base, right, y = self.base, self.left + self.plot_w, self.height - 4
        parts = [f'<line x1="{self.left}" y1="{base}" x2="{right}" y2="{base}" stroke="#bbb"/>']
        for t in ticks:
            x = px(t)
            parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 3}" '
                         'stroke="#bbb"/>')
            if labels:
                parts.append(f'<text class="scalekit-x-tick" x="{x:.1f}" y="{y}" '
                             f'text-anchor="middle" fill="{LABEL}">{escape(fmt_tick(t))}</text>')
        if labels and x_label:  # bottom-left, under the y labels: never on the plot
            parts.append(f'<text x="2" y="{y}" fill="#888">{escape(x_label)}</text>')
        return parts
