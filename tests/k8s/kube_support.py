"""Test support on the emulated cluster: its "images" (see harness/kubelet.py) and the
check that a test left nothing behind."""

from __future__ import annotations

import stat
import time
from pathlib import Path

from harness import EmulatedCluster, Image

IMAGE = "ghcr.io/scalekit/test-worker:dev"  # any name: this environment runs it
CRASHING_IMAGE = "ghcr.io/scalekit/test-worker:broken"  # `dask` exits with an ImportError
HANGING_IMAGE = "ghcr.io/scalekit/test-worker:hangs"  # `dask` never listens
MISSING_IMAGE = "registry.invalid/scalekit/no-such-image:1.0"  # the pull fails
# `dask` prints its environment's credential, as a crash dump or a chatty entrypoint does
LEAKY_IMAGE = "ghcr.io/scalekit/test-worker:leaks-env"


def _script(folder: Path, body: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dask"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(folder)


def add_test_images(kube: EmulatedCluster, root: Path) -> None:
    kube.add_image(CRASHING_IMAGE, Image(bin_dir=_script(root / "broken", (
        'echo "Traceback (most recent call last):" >&2\n'
        'echo "  File \\"/opt/conda/bin/dask\\", line 5, in <module>" >&2\n'
        "echo \"ModuleNotFoundError: No module named 'distributed'\" >&2\n"
        "exit 1\n"))))
    kube.add_image(HANGING_IMAGE, Image(bin_dir=_script(root / "hangs", (
        'echo "waiting for a GPU driver that never comes"\nexec sleep 600\n'))))
    kube.add_image(LEAKY_IMAGE, Image(bin_dir=_script(root / "leaky", (
        'echo "starting with AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" >&2\n'
        'echo "KeyError: \'$AWS_SECRET_ACCESS_KEY\'" >&2\n'
        "exit 1\n"))))
    kube.add_image(MISSING_IMAGE, Image(pull_error=(
        "rpc error: code = NotFound desc = failed to pull and unpack image "
        f'"{MISSING_IMAGE}": not found')))


MANAGED = "app.kubernetes.io/managed-by=scalekit"


def assert_nothing_left(kube: EmulatedCluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = {
            "daskclusters": [c["metadata"]["name"] for c in kube.dask("daskclusters")],
            "pods": [p["metadata"]["name"] for p in kube.pods()],
            "processes": kube.processes(),
            # a cluster's TLS Secret and NetworkPolicy go with it (ownerReferences)
            "secrets": [x["metadata"]["name"] for x in kube.objects("secrets", labels=MANAGED)],
            "networkpolicies": [x["metadata"]["name"] for x in kube.objects(
                "networkpolicies", labels=MANAGED, group="networking.k8s.io")],
        }
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after the test: {left}")
        time.sleep(0.3)
