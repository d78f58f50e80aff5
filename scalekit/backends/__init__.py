"""Cluster backends behind one small protocol (see :mod:`scalekit.backends.base`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scalekit.backends.base import ClusterBackend, TrainingHooks
from scalekit.config import ClusterConfig
from scalekit.errors import ConfigError


def make_backend(config: ClusterConfig, kubernetes: Mapping[str, Any] | None = None, *,
                 hooks: TrainingHooks | None = None) -> ClusterBackend:
    """The backend for ``config.backend``, not started yet.

    Parameters
    ----------
    config : ClusterConfig
        The cluster to start; ``config.backend`` names the backend.
    kubernetes : mapping, optional
        Overrides of ``scalekit.kubernetes.*`` settings (image, namespace, ...).
    hooks : TrainingHooks, optional
        The running fits, for training-aware adaptive scaling (default: none).
    """
    if config.backend == "local":
        if kubernetes:
            raise ConfigError(
                "kubernetes", dict(kubernetes), "no Kubernetes options for backend='local'",
                "Pass backend='kubernetes' to start on the Dask operator.",
            )
        from scalekit.backends.local import LocalBackend

        return LocalBackend(config, hooks=hooks)
    from scalekit.backends.kubernetes import KubernetesBackend
    from scalekit.config import KubernetesConfig

    return KubernetesBackend(config, KubernetesConfig.from_config(**dict(kubernetes or {})),
                             hooks=hooks)


__all__ = ["ClusterBackend", "TrainingHooks", "make_backend"]
