"""Numbers as every view writes them: durations, sizes, counts, rates, table cells.

Plain text, no HTML: the text forms, the HTML renderers (which escape what these return)
and the JupyterLab snapshots all format through here, so a value reads the same in every
view.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = [
    "GIB",
    "fmt_bytes",
    "fmt_clock",
    "fmt_duration",
    "fmt_rate",
    "fmt_seconds",
    "fmt_value",
    "gib",
    "is_number",
    "plural",
    "where",
]

GIB = float(2**30)


def is_number(value: Any) -> bool:
    """A finite int/float that is not a bool (bools in a row are ``*_best`` markers)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def gib(n_bytes: int | float) -> str:
    """Bytes as GiB with two decimals, e.g. ``"1.50"``."""
    return f"{n_bytes / GIB:.2f}"


def fmt_seconds(seconds: float | None) -> str:
    """``"12 ms"``, ``"3.4 s"``, ``"2m 05s"``, ``"1h 02m"``; ``"–"`` when unknown."""
    if seconds is None:
        return "–"
    s = max(float(seconds), 0.0)
    if s < 1.0:
        return f"{s * 1000:.0f} ms"
    if s < 60.0:
        return f"{s:.1f} s"
    whole = int(round(s))
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def fmt_duration(seconds: float | None) -> str:
    """Whole seconds for ETAs and run times: ``"45s"``, ``"3m 05s"``, ``"1h 02m"``; ``"–"``."""
    if seconds is None:
        return "–"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_bytes(nbytes: int) -> str:
    """``"512 B"``, ``"3.2 KiB"``, ``"1.5 MiB"``, ``"2.0 GiB"``."""
    size = float(max(nbytes, 0))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024.0 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    raise AssertionError("unreachable")


def fmt_rate(samples_per_s: float | None) -> str:
    """``"13,576 samples/s"``; ``"–"`` when unknown."""
    return "–" if samples_per_s is None else f"{samples_per_s:,.0f} samples/s"


def fmt_value(value: Any, key: str = "") -> str:
    """A table cell as skorch's ``PrintLog`` writes it: ``.4f``, counts and epochs bare."""
    if not is_number(value):
        return ""
    if isinstance(value, int) or key == "epoch" or key.endswith("_count"):
        return str(int(value))
    return f"{float(value):.4f}"


def plural(n: int, word: str) -> str:
    """``"1 step"``, ``"40 steps"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def where(epoch: int, step: int) -> str:
    """Where training stood, in the words every view uses.

    ``epoch`` counts the epochs completed and ``step`` the batches completed in the next
    one (the checkpoint convention): ``"after epoch 3"`` at a boundary, ``"in epoch 4
    (step 12)"`` inside the next epoch. A resize after 18 epochs reads "after epoch 18"
    in the panel, the timeline, the sidebar and the tutorials' own printouts alike.
    """
    if step:
        return f"in epoch {epoch + 1} (step {step})"
    return f"after epoch {epoch}"


def fmt_clock(when: float) -> str:
    """A wall-clock time of day, ``"12:03:04"`` (local time): no age that goes stale."""
    return time.strftime("%H:%M:%S", time.localtime(when))
