"""Cluster backends behind one small protocol (see :mod:`scalekit.backends.base`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scalekit.backends.base import ClusterBackend
from scalekit.config import ClusterConfig
from scalekit.errors import ConfigError


def make_backend(config: ClusterConfig, kubernetes: Mapping[str, Any] | None = None
                 ) -> ClusterBackend:
    """The backend for ``config.backend``, not started yet.

    ``kubernetes`` overrides ``scalekit.kubernetes.*`` settings (image, namespace, ...).
    """
    if config.backend == "local":
        if kubernetes:
            raise ConfigError(
                "kubernetes", dict(kubernetes), "no Kubernetes options for backend='local'",
                "Pass backend='kubernetes' to start on the Dask operator.",
            )
        from scalekit.backends.local import LocalBackend

        return LocalBackend(config)
    from scalekit.backends.kubernetes import KubernetesBackend
    from scalekit.config import KubernetesConfig

    return KubernetesBackend(config, KubernetesConfig.from_config(**dict(kubernetes or {})))


__all__ = ["ClusterBackend", "make_backend"]
