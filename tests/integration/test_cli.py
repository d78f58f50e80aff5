"""``scalekit demo`` and ``scalekit --version`` as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import scalekit

STEPS = ["up", "scale_up", "compute", "adapt_on", "adapt_off", "scale_down", "close"]


def scalekit_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scalekit", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.timeout(300)
def test_demo_json() -> None:
    proc = scalekit_cli("demo", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # stdout holds the JSON only
    assert report["ok"] is True
    assert report["workers"] == 2
    n = 2_000_000
    assert report["result"] == (n - 1) * n * (2 * n - 1) // 6
    assert list(report["steps"]) == STEPS
    assert all(isinstance(v, float) and v >= 0 for v in report["steps"].values())
    assert report["total_s"] >= sum(report["steps"].values()) - 0.01
    print(f"\nscalekit demo --json: {report['steps']} total {report['total_s']}s")


@pytest.mark.timeout(300)
def test_demo_text_with_one_worker() -> None:
    proc = scalekit_cli("demo", "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "cluster up with 1 worker" in out
    assert "scaled to 2 workers" in out
    assert "adaptive scaling on (1..2)" in out
    assert "demo ok in" in out


def test_version() -> None:
    proc = scalekit_cli("--version", timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"scalekit {scalekit.__version__}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "--workers", "0"], "--workers must be at least 1"),
        (["demo", "--workers", "x"], "invalid int value"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["fly"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    proc = scalekit_cli(*args, timeout=60)
    assert proc.returncode == 2
    assert fragment in proc.stderr


def test_demo_failure_exits_nonzero_with_json() -> None:
    # more workers than max-workers allows: the demo fails at once, as data
    proc = scalekit_cli("demo", "--json", "--workers", "17", timeout=120)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert "workers" in report["error"] and "17" in report["error"]
