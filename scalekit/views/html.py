"""The HTML helpers every renderer shares: escaping, colours, bars, status lines, URLs.

One module, so that a colour or the look of a bar is decided once for the cluster, the
training run, the GPU cells and the charts. Every value that reaches HTML goes through
:func:`escape`.
"""

from __future__ import annotations

import html

__all__ = [
    "CPU_COLOR",
    "DANGER_COLOR",
    "LEVEL_COLORS",
    "MEMORY_COLOR",
    "PALETTE",
    "WARN_COLOR",
    "escape",
    "notice_html",
    "percent_bar",
    "safe_url",
]

CPU_COLOR = "#1f77b4"
MEMORY_COLOR = "#2ca02c"
WARN_COLOR = "#ff7f0e"
DANGER_COLOR = "#d62728"
LEVEL_COLORS = {"info": "inherit", "warning": WARN_COLOR, "error": DANGER_COLOR}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def escape(value: object) -> str:
    """HTML-escape ``str(value)``, quotes included (safe inside attributes)."""
    return html.escape(str(value), quote=True)


def safe_url(url: str | None) -> str | None:
    """The URL if it is plain http(s) or a same-origin path (JupyterHub/Binder proxy
    links such as ``/user/x/proxy/8787/status``), else ``None`` (never ``javascript:``)."""
    if not url:
        return None
    url = url.strip()
    if url.lower().startswith(("http://", "https://")):
        return url
    if url.startswith("/") and not url.startswith("//"):
        return url
    return None


def percent_bar(
    fraction: float, label: str = "", *, color: str = CPU_COLOR, width: str = "10em"
) -> str:
    """A horizontal bar filled to ``fraction`` (clamped to 0..1), its label beside it.

    The label sits right of the bar, not on its fill, so it reads on any fill colour
    and at any fill level.

    Parameters
    ----------
    fraction : float
        How full the bar is; values above 1 draw a full bar in the danger colour.
    label : str
        Text beside the bar (escaped).
    color : str
        CSS colour of the filled part.
    width : str
        CSS width of the whole bar.
    """
    fill = min(max(float(fraction), 0.0), 1.0)
    if fraction > 1.0:
        color = DANGER_COLOR
    text = (f'<span class="scalekit-bar-label" style="font-size:0.8em;margin-left:0.4em;'
            f'white-space:nowrap">{escape(label)}</span>' if label else "")
    return (
        '<span class="scalekit-bar-wrap" style="display:inline-flex;align-items:center;'
        'vertical-align:middle">'
        f'<span class="scalekit-bar" style="display:inline-block;width:{escape(width)};'
        'height:0.9em;background:#e6e6e6;border-radius:2px;overflow:hidden">'
        f'<span style="display:block;width:{fill * 100:.1f}%;height:100%;'
        f'background:{escape(color)}"></span></span>{text}</span>'
    )


def notice_html(level: str, message: str) -> str:
    """A status line; errors in red, warnings in orange."""
    color = LEVEL_COLORS.get(level, "inherit")
    weight = "bold" if level == "error" else "normal"
    return (
        f'<div class="scalekit-status scalekit-{escape(level)}" '
        f'style="color:{color};font-weight:{weight}">{escape(message)}</div>'
    )
