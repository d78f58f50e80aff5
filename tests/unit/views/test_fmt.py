"""Numbers as every view writes them."""

from __future__ import annotations

import pytest

from scalekit.views.fmt import fmt_bytes, fmt_rate, fmt_seconds, plural, where


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "–"), (0.0123, "12 ms"), (-1.0, "0 ms"), (1.0, "1.0 s"), (59.94, "59.9 s"),
    (125.0, "2m 05s"), (3720.0, "1h 02m"),
])
def test_fmt_seconds(seconds: float | None, text: str) -> None:
    assert fmt_seconds(seconds) == text


def test_small_formatters() -> None:
    assert [fmt_bytes(n) for n in (0, 512, 3 * 1024, 3 * 2**20 // 2, 5 * 2**40)] == [
        "0 B", "512 B", "3.0 KiB", "1.5 MiB", "5120.0 GiB"]
    assert (plural(1, "step"), plural(0, "step"), plural(40, "step")) == (
        "1 step", "0 steps", "40 steps")
    # the checkpoint convention: 3 epochs done, 12 batches into the 4th
    assert (where(3, 0), where(3, 12)) == ("after epoch 3", "in epoch 4 (step 12)")


def test_rates_have_thousands_separators() -> None:
    assert fmt_rate(13576.4) == "13,576 samples/s" and fmt_rate(None) == "–"
