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


SCRIPT = '''
import sys

import numpy as np
import scalekit as sk
from skorch import NeuralNetClassifier
from sklearn.datasets import load_digits
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, X):
        return self.seq(X)


if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32), y.astype(np.int64)
    session = sk.cluster(workers=1)  # as the notebook had it
    net = NeuralNetClassifier(MLP, criterion=nn.CrossEntropyLoss, lr=0.1, verbose=0,
                              max_epochs=int(sys.argv[1]))
    run = sk.fit(net, X, y, cluster=session)
    print("WORLD", run.report.world_size, "EPOCHS", len(net.history))
    sys.exit(int(sys.argv[2]))
'''


@pytest.mark.timeout(300)
def test_run_executes_a_notebooks_script_unchanged_on_the_commands_cluster(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = scalekit_cli("run", "--workers", "2", str(script), "3", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "WORLD 2 EPOCHS 3" in out  # its sk.cluster(workers=1) got the command's cluster
    assert out.count("epoch ") >= 3 and "valid_acc" in out and "finished after 3" in out
    # the script's exit status is the command's
    assert scalekit_cli("run", "--workers", "1", str(script), "1", "3").returncode == 3


def test_run_a_missing_script():
    proc = scalekit_cli("run", "no-such-script.py")
    assert proc.returncode == 2 and "no such script" in proc.stderr
