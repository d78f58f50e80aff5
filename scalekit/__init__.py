"""scalekit: scale PyTorch/skorch training from a Jupyter notebook.

Importing this package is cheap (no torch, no distributed): public names load on first
use, so ``%load_ext scalekit`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "cluster": "scalekit.session",
    "fit": "scalekit.fitting",
    "plan": "scalekit.planner",
    "train": "scalekit.fitting",
    "runs": "scalekit.remote_runs",
    "attach": "scalekit.remote_runs",
    "TrainingRun": "scalekit.fitting",
    "TrainConfig": "scalekit.config",
    "TrainingError": "scalekit.errors",
    "ClusterSession": "scalekit.session",
    "active_sessions": "scalekit.session_registry",
    "current_session": "scalekit.session_registry",
    "close_all": "scalekit.session_registry",
    "ClusterConfig": "scalekit.config",
    "AdaptConfig": "scalekit.config",
    "PanelConfig": "scalekit.config",
    "EventBus": "scalekit.events",
    "ScalekitError": "scalekit.errors",
    "ConfigError": "scalekit.errors",
    "ClusterError": "scalekit.errors",
    "UsageError": "scalekit.errors",
}

__all__ = sorted([*_LAZY, "callbacks", "data", "strategies", "load_ipython_extension",
                  "unload_ipython_extension"])

if TYPE_CHECKING:
    from scalekit import callbacks  # noqa: F401
    from scalekit.config import AdaptConfig, ClusterConfig, PanelConfig, TrainConfig  # noqa: F401
    from scalekit.errors import (  # noqa: F401
        ClusterError,
        ConfigError,
        ScalekitError,
        TrainingError,
        UsageError,
    )
    from scalekit.events import EventBus  # noqa: F401
    from scalekit.fitting import TrainingRun, fit, train  # noqa: F401
    from scalekit.session import ClusterSession, cluster  # noqa: F401
    from scalekit.session_registry import (  # noqa: F401
        active_sessions,
        close_all,
        current_session,
    )


_MODULES = {"callbacks": "scalekit.callbacks", "data": "scalekit.data",
            "strategies": "scalekit.training.strategies"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = import_module(_MODULES[name])
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scalekit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext scalekit``: register the ``%scalekit`` magic."""
    from scalekit.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext scalekit``: close the clusters the magic started."""
    from scalekit.magics import unload_ipython_extension as unload

    unload(ipython)
