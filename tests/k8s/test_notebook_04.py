"""notebooks/04_kubernetes.ipynb, executed unchanged against the emulated cluster.

The notebook reads what a user sets for a real cluster: ``KUBECONFIG`` (here the
emulated cluster's), ``SCALEKIT_IMAGE`` (any name runs this environment, see
README.md), ``SCALEKIT_NAMESPACE`` (the one the operator watches) and
``SCALEKIT_CHECKPOINTS`` (a folder: pods are local processes and share it). It runs in
a real kernel, as a user's notebook outside the cluster would (port-forward, no cluster
DNS), and must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from kube_support import IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04_kubernetes.ipynb"
CELL_TIMEOUT_S = 420  # above the notebook's own waits (5 min for pods), so they report
KERNEL = "scalekit-k8s-test"


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out and "text/plain" in out.data:
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def test_notebook_04_runs_against_the_emulated_cluster(notebook, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    kube = notebook
    # a kernelspec for this interpreter (the project's venv), whatever else is installed
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scalekit k8s tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # the kernel inherits this environment: what a user sets for a real cluster
    for name in list(os.environ):
        if name.startswith("DASK_SCALEKIT__"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # outside the cluster
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("SCALEKIT_IMAGE", IMAGE)
    monkeypatch.setenv("SCALEKIT_NAMESPACE", kube.namespace)
    monkeypatch.setenv("SCALEKIT_CHECKPOINTS", str(checkpoints))
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}})
    left: list[str] = []
    try:
        client.execute()  # raises CellExecutionError with the failing cell and traceback
    finally:
        # after a failed cell the kernel's shutdown deletes the cluster; make sure of it
        left = [dc["metadata"]["name"] for dc in kube.dask("daskclusters")]
        for name in left:
            kube.call(lambda name=name: kube.store.delete(
                kube.store.kind("kubernetes.dask.org", "v1", "daskclusters"),
                kube.namespace, name))

    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
    # nothing alarming on stderr either (e.g. tracebacks logged by a background thread)
    stderr = "".join(out.text for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs
                     if out.output_type == "stream" and out.name == "stderr")
    assert "Traceback" not in stderr, stderr
    text = outputs_text(nb)
    assert f"image:       {IMAGE}" in text and f"namespace:   {kube.namespace}" in text
    assert "scheduler:   tls://127.0.0.1:" in text  # the port-forward
    assert "3 workers" in text and "1 worker\n" in text
    assert "status: finished" in text
    assert "world size per epoch: [2, 2, 2, 2, 2, 2]" in text
    assert "session closed: True | DaskCluster deleted: True" in text
    # rank 0 wrote its checkpoints into the folder the notebook named
    (run_dir,) = checkpoints.iterdir()
    assert list(run_dir.glob("ckpt-*.pt")) and (run_dir / "latest.json").exists()
    # `%scalekit down` deleted it (the output above); nothing is left after the kernel
    # (the `notebook` fixture also checks pods and pod processes)
    assert not left
