"""Fixtures for the Kubernetes backend's tests on the emulated cluster (see README.md).

- ``kube``: one emulated cluster for the whole test session (API server, node, the real
  dask operator); its default "image" is this Python environment with this folder and
  the scalekit this process imports on the import path, so pods can unpickle the test
  models and run the notebook's scalekit (a git worktree's, not the editable install's).
- ``notebook``: this process as a notebook outside the cluster (``KUBECONFIG`` set, no
  in-cluster variables, ``scalekit.kubernetes.*`` pointing at the emulated cluster).
  After the test, nothing may be left: no DaskCluster, no pod, no pod process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest
from harness import EmulatedCluster
from kube_support import IMAGE, add_test_images, assert_nothing_left

import scalekit

HERE = Path(__file__).parent
SCALEKIT_ROOT = Path(scalekit.__file__).resolve().parents[1]  # the folder holding scalekit/


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    root = tmp_path_factory.mktemp("kube")
    cluster = EmulatedCluster(root, namespace="scalekit",
                              pythonpath=(str(HERE), str(SCALEKIT_ROOT)))
    add_test_images(cluster, root / "images")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def notebook(kube: EmulatedCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedCluster]:
    """This process as a notebook outside the cluster; checks nothing is left after."""
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name in list(os.environ):
        if name.startswith("DASK_SCALEKIT__KUBERNETES"):
            monkeypatch.delenv(name)
    settings = {"scalekit.kubernetes.image": IMAGE,
                "scalekit.kubernetes.start-timeout": "240s",
                "scalekit.kubernetes.close-timeout": "30s"}
    try:
        with dask.config.set(settings):
            yield kube
    finally:
        kube.clear_faults()
        assert_nothing_left(kube)
