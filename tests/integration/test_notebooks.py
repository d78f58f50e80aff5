"""Every tutorial in notebooks/ runs top to bottom, and is stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# 04_kubernetes needs a Kubernetes cluster with the Dask operator, which this test has
# not: tests/k8s/test_notebook_04.py runs it against the emulated cluster instead
# (test_stored_without_outputs still checks it here)
RUNNABLE = [p for p in NOTEBOOKS if p.name != "04_kubernetes.ipynb"]
CELL_TIMEOUT_S = 120  # one cell
NOTEBOOK_TIMEOUT_S = 300  # the whole notebook, kernel start and shutdown included
KERNEL = "scalekit-test"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/*.ipynb: none found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
    # no saved widget state either (it would show a stale panel)
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in metadata"


@pytest.fixture
def kernel_for_this_python(tmp_path, monkeypatch) -> str:
    """A kernelspec that runs the interpreter running the tests (the project's venv),
    whatever kernels the user has installed elsewhere."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scalekit tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch, kernel_for_this_python):
    from nbclient import NotebookClient

    workdir = tmp_path / "cwd"  # files a notebook writes land here, not in the repo
    workdir.mkdir()

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_for_this_python,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=60,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell and traceback

    errors = [
        out for cell in nb.cells if cell.cell_type == "code"
        for out in cell.outputs if out.output_type == "error"
    ]
    assert not errors
    if path.name == "02_distributed_training.ipynb":
        # its last cell trains on the GPUs where there are some, and says so where not
        import torch

        said = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
        expected = "GPU worker(s) in bf16" if torch.cuda.is_available() else "No GPU here"
        assert expected in said, said
