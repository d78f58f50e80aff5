"""Cluster backends behind one small protocol (see :mod:`scalekit.backends.base`)."""

from __future__ import annotations

from scalekit.backends.base import ClusterBackend
from scalekit.config import ClusterConfig


def make_backend(config: ClusterConfig) -> ClusterBackend:
    """The backend for ``config.backend``, not started yet."""
    if config.backend == "local":
        from scalekit.backends.local import LocalBackend

        return LocalBackend(config)
    from scalekit.backends.kubernetes import KubernetesBackend  # type: ignore[import-not-found]

    return KubernetesBackend(config)


__all__ = ["ClusterBackend", "make_backend"]
