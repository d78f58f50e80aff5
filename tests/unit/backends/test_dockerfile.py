"""docs/Dockerfile (the kubernetes backend's worker image) pins the notebook's versions:
the pins of constraints.txt for what travels between notebook and pods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "docs" / "Dockerfile"
MUST_MATCH = ("torch", "dask", "distributed", "skorch")
PIN = re.compile(r"""["']?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s"'\\]+)""")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def dockerfile_pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        for name, version in PIN.findall(line):
            pins.setdefault(_name(name), set()).add(version)
    return pins


@pytest.mark.parametrize("package", MUST_MATCH)
def test_the_image_pins_the_constraint_version(package):
    pinned = dockerfile_pins().get(package)
    assert pinned, f"docs/Dockerfile does not pin {package}"
    wanted = constraints()[package]
    assert pinned == {wanted}, (
        f"docs/Dockerfile pins {package}=={sorted(pinned)}, constraints.txt has {wanted}: "
        "the pods would run other versions than the notebook")


def test_every_pin_shared_with_constraints_agrees():
    pins, wanted = dockerfile_pins(), constraints()
    wrong = {p: sorted(v) for p, v in pins.items() if p in wanted and v != {wanted[p]}}
    assert not wrong, f"docs/Dockerfile disagrees with constraints.txt: {wrong}"
    # s3fs is released with fsspec and requires exactly its own fsspec version
    if "s3fs" in pins:
        assert pins["s3fs"] == pins.get("fsspec") == {wanted["fsspec"]}


def test_cpu_torch_python_and_scalekit_from_the_checkout():
    text = DOCKERFILE.read_text()
    python = re.search(r"^PYTHON \?= python(\d+\.\d+)", (ROOT / "Makefile").read_text(), re.M)
    assert python and re.search(rf"^FROM python:{re.escape(python.group(1))}\b", text, re.M)
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu\s+\"torch==", text)
    assert "COPY scalekit " in text and "SKIP_JUPYTER_BUILDER=1 pip install" in text


def test_the_kubernetes_docs_point_to_the_file():
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "docs/Dockerfile" in docs
    assert "```dockerfile" not in docs, "the Dockerfile lives in docs/Dockerfile only"
