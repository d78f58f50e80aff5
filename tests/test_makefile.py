"""The README's two commands start at once the second time: once `make test` (or
`make lab`) installed everything, nothing plans an install again, not even after npm
rewrote the extension's package-lock.json (as every install does)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv" / ".installed-test").exists() or shutil.which("make") is None,
    reason="needs the checkout installed by `make test` (and make)")

INSTALL_STEPS = ("pip install", "rm -rf extensions/labextension", "python3.11 -m venv")


def plan(*args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("target", ["lab", "test", "demo"])
def test_a_second_run_plans_no_install_step(target):
    steps = plan(target)
    assert not [s for s in INSTALL_STEPS if s in steps], steps


def test_npm_rewriting_package_lock_plans_no_rebuild():
    steps = plan("-W", "extensions/package-lock.json", "lab")  # "as if just modified"
    assert not [s for s in INSTALL_STEPS if s in steps], steps


def test_a_changed_extension_source_plans_a_rebuild(tmp_path):
    changed = tmp_path / "index.ts"
    changed.write_text("export const edited = true;\n")
    steps = plan("lab", f"EXT_SOURCES={changed}")
    assert "rm -rf extensions/labextension" in steps and "pip install" in steps
