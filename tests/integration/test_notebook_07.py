"""Tutorial 07 as a user lives it: run to the restart, restart the kernel (the tutorial
says where), run on; the detached fit went on meanwhile and the fresh kernel gets its
net. The test asserts what the prose promises, from the cells' outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "07_runs_that_outlive_the_kernel.ipynb"


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_detached_fit_goes_on_across_a_kernel_restart(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a private cluster
    spec = tmp_path / "jupyter" / "kernels" / "scalekit-tests"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scalekit tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    restart_at = next(i for i, c in enumerate(nb.cells)
                      if "after-restart" in c.metadata.get("tags", []))
    client = NotebookClient(nb, kernel_name="scalekit-tests", timeout=240,
                            startup_timeout=60, resources={"metadata": {"path": str(workdir)}})
    from jupyter_core.utils import run_sync

    def kernel_pid() -> int:  # a probe cell, not part of the stored tutorial
        probe = nbformat.v4.new_code_cell("import os; print(os.getpid())")
        client.execute_cell(probe, 0)
        return int(text_of(probe))

    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if index == restart_at:
                    before = kernel_pid()
                    run_sync(client.km.restart_kernel)(now=True)  # what the tutorial asks
                    run_sync(client.kc.wait_for_ready)(timeout=60)
                    assert kernel_pid() != before  # a new kernel: nothing of the old one
                client.execute_cell(cell, index)
    finally:  # never leave the background cluster behind
        subprocess.run([sys.executable, "-m", "scalekit", "cluster", "down", "--name",
                        "tutorial07"], capture_output=True, timeout=120)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    run_id = (workdir / "run_id.txt").read_text()
    after = [c for i, c in enumerate(nb.cells) if i >= restart_at and c.cell_type == "code"]
    runs_table, attach, result, terminal, down = (text_of(c) for c in after)
    assert run_id in runs_table and "True" in runs_table  # listed, detached
    assert f"run {run_id}" in attach  # its panel (as text here)
    found = re.search(rf"run {run_id} finished: 40 epochs, test accuracy (0\.\d+)", result)
    assert found and float(found.group(1)) > 0.9, result
    assert f"run {run_id} finished" in terminal and "epoch  40" in terminal
    assert "background cluster 'tutorial07' ended" in down
    assert (workdir / "checkpoints" / "tutorial07" / "events.jsonl").exists()
