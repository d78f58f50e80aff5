"""Notebook views: thin ipywidgets panels over the view-models of :mod:`scalekit.views`.

Like tqdm's notebook bar over the plain tqdm, a panel folds events with the pure
view-models and draws them with the pure renderers; it adds only widgets, throttled
redraws and user intents through injected callables. The panels load ipywidgets only
when first used, so ``repr(session)`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ClusterPanel": "scalekit.widgets.cluster_panel",
    "TrainingPanel": "scalekit.widgets.training_panel",
}

__all__ = ["ClusterPanel", "TrainingPanel"]

if TYPE_CHECKING:
    from scalekit.widgets.cluster_panel import ClusterPanel  # noqa: F401
    from scalekit.widgets.training_panel import TrainingPanel  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scalekit.widgets' has no attribute {name!r}")
    return getattr(import_module(module), name)
