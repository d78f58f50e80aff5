"""The shared HTML helpers: bars and status lines."""

from __future__ import annotations

import pytest

from scalekit.views.html import DANGER_COLOR, notice_html, percent_bar


@pytest.mark.parametrize(
    ("fraction", "width"), [(0.0, "0.0%"), (0.5, "50.0%"), (1.0, "100.0%"), (-1, "0.0%")]
)
def test_percent_bar_fill(fraction: float, width: str) -> None:
    assert f"width:{width}" in percent_bar(fraction, "x")


def test_percent_bar_overfull_is_red_and_clamped() -> None:
    out = percent_bar(1.5, "150 %")
    assert "width:100.0%" in out and DANGER_COLOR in out


def test_notice_error_is_red() -> None:
    assert DANGER_COLOR in notice_html("error", "boom")
    assert DANGER_COLOR not in notice_html("info", "fine")
