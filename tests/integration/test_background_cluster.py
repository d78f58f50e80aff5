"""Local clusters that outlive the kernel: `scalekit cluster up` starts one in the
background, a notebook joins it with `sk.cluster(connect=...)`, leaving the session
leaves it running, and `scalekit cluster down` ends it and every process it started."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import scalekit as sk
from scalekit.errors import ClusterError, UsageError

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "scalekit" / "clusters"


def cli(*args: str) -> subprocess.CompletedProcess:
    # the workers import the tests' model classes, as a user's workers import theirs
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                         os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "scalekit", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONPATH": path})


def family(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_a_background_cluster_outlives_its_sessions_and_down_leaves_nothing(private_cache):
    up = cli("cluster", "up", "--workers", "2", "--name", "bg", "--memory-limit", "1GiB")
    assert up.returncode == 0, up.stderr[-3000:]
    folder = private_cache / "bg"
    pid = int((folder / "pid").read_text())
    processes = family(pid)
    try:
        assert 'sk.cluster(connect="local:bg")' in up.stdout
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        assert oct(folder.stat().st_mode & 0o777) == "0o700"  # a scheduler file is a key
        again = cli("cluster", "up", "--name", "bg")
        assert again.returncode == 1 and "runs already" in again.stderr
        assert "bg\ttcp://127.0.0.1:" in cli("cluster", "list").stdout

        session = sk.cluster(connect="local:bg")
        assert session.backend.name == "connected" and len(session.client.nthreads()) == 2
        session.scale(1)  # steered from the notebook, through the background process
        session.wait_for_workers(1, timeout=60)
        from skorch import NeuralNetClassifier
        from training_models import DigitsMLP, digits

        X, _, y, _ = digits()
        net = NeuralNetClassifier(DigitsMLP, max_epochs=2, verbose=0)
        run = sk.fit(net, X, y, cluster=session, show=False, checkpoint=False)
        assert run.status == "finished"
        session.close()

        again = sk.cluster(connect=str(folder / "scheduler.json"))  # by scheduler file
        assert len(again.client.nthreads()) == 1  # still there, as the session left it
        again.close()
        scaled = cli("cluster", "scale", "2", "--name", "bg")  # the magic's verbs, too
        assert scaled.returncode == 0, scaled.stderr[-2000:]
        assert "\n  2 workers\n" in cli("cluster", "status", "--name", "bg").stdout  # scale waited
    finally:
        down = cli("cluster", "down", "--name", "bg")
    assert down.returncode == 0, down.stderr
    gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, [p.pid for p in alive]
    assert len(processes) >= 3  # the background process and its workers' nannies/workers
    assert not (folder / "pid").exists() and not (folder / "scheduler.json").exists()
    assert cli("cluster", "down", "--name", "bg").returncode == 1  # nothing left to end


def test_connecting_to_what_is_not_there_says_how_to_start_it(private_cache):
    with pytest.raises(ClusterError, match=r"scalekit cluster up --name nothing"):
        sk.cluster(connect="local:nothing")
    with pytest.raises(UsageError, match="a scheduler file"):
        sk.cluster(connect=str(private_cache / "missing.json"))


def test_connect_takes_the_clusters_own_settings(private_cache):
    with pytest.raises(UsageError, match="drop workers"):
        sk.cluster(connect="local", workers=3)


def test_a_dask_scheduler_scalekit_did_not_start_is_trained_on_not_scaled(private_cache,
                                                                          caplog):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as plain:
        # its scheduler runs in this process: what it logs, a notebook running it shows
        with caplog.at_level(logging.WARNING, logger="distributed"):
            session = sk.cluster(connect=plain.scheduler_address)
        assert not [r.getMessage() for r in caplog.records if "scalekit" in r.getMessage()]
        try:
            assert len(session.client.nthreads()) == 1
            with pytest.raises(UsageError, match="did not start, so it cannot scale"):
                session.scale(2)
        finally:
            session.close()
        assert len(plain.scheduler_info["workers"]) == 1  # left as it was
