"""Notebook views: thin ipywidgets panels fed by events, with HTML/text fallbacks.

``scalekit.widgets.render`` holds pure renderers (no ipywidgets); the panels load
ipywidgets only when first used, so ``repr(session)`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ClusterPanel": "scalekit.widgets.cluster_panel",
    "TrainingPanel": "scalekit.widgets.training_panel",
    "TrainingState": "scalekit.widgets.training_state",
}

__all__ = ["ClusterPanel", "TrainingPanel", "TrainingState"]

if TYPE_CHECKING:
    from scalekit.widgets.cluster_panel import ClusterPanel  # noqa: F401
    from scalekit.widgets.training_panel import TrainingPanel  # noqa: F401
    from scalekit.widgets.training_state import TrainingState  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scalekit.widgets' has no attribute {name!r}")
    return getattr(import_module(module), name)
