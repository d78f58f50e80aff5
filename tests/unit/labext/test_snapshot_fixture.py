"""The snapshot the TypeScript tests read is the one the kernel builds.

``extensions/test/fixtures/snapshot.json`` is what :mod:`scalekit.views.snapshot` makes
of a fixed story (a cluster being scaled, its memory limits overcommitting the machine,
a GPU worker with and one without NVML, a finished run and one recovering from a lost
worker). The extension's unit tests (vitest) render it; this test fails when the kernel
would send something else, so the two sides cannot drift apart.
``SCALEKIT_UPDATE_FIXTURES=1`` rewrites the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    ClusterSnapshot,
    EpochEnded,
    Event,
    Notice,
    RankStatus,
    RunFinished,
    RunStarted,
    ScaleRequested,
    WorkerStats,
)
from scalekit.labext.bridge import PROTOCOL
from scalekit.labext.cluster_runs import ClusterRuns
from scalekit.views.cluster_state import ClusterState
from scalekit.views.snapshot import cluster_dict, run_dict
from scalekit.views.training_state import TrainingState

FIXTURE = Path(__file__).resolve().parents[3] / "extensions/test/fixtures/snapshot.json"
GIB = 2**30
T0 = 1_750_000_000.0
MACHINE = int(23.54 * GIB)


def _cluster() -> dict[str, Any]:
    limit = MACHINE // 2  # Dask's "auto" for the first 2 workers, kept for the third
    workers = (
        WorkerStats(name="w0", address="tcp://127.0.0.1:40001", nthreads=1, cpu=95.0,
                    memory=GIB // 4, memory_limit=limit, time=T0),
        WorkerStats(name="w1", address="tcp://127.0.0.1:40002", nthreads=2, cpu=80.0,
                    memory=int(9.9 * GIB), memory_limit=limit, time=T0, gpus=1.0,
                    gpu_name="NVIDIA H200", gpu_utilization=37.0, gpu_memory=14 * GIB,
                    gpu_memory_total=140 * GIB),
        WorkerStats(name="w2", address="tcp://127.0.0.1:40003", nthreads=1, cpu=0.0,
                    memory=GIB // 8, memory_limit=limit, time=T0, gpus=1.0),
    )
    state = ClusterState()
    for event in (
        ScaleRequested(n=4, source="sidebar", time=T0 + 1),
        Notice(level="info", message="scaling to 4 workers", time=T0 + 1),
        ClusterSnapshot(backend="local", status="running", workers=workers, requested=4,
                        dashboard_link="http://127.0.0.1:8787/status",
                        scheduler_address="tcp://127.0.0.1:40000", time=T0 + 2),
    ):
        state.apply(event)
    return cluster_dict(state.snapshot, cluster_id="c1", state=state,  # type: ignore[arg-type]
                        max_workers=8, machine=MACHINE)


def _run(run_id: str, events: list[Event]) -> dict[str, Any]:
    return run_dict(TrainingState.from_events(events, run_id=run_id))


def _finished() -> list[Event]:
    t = T0 - 100
    out: list[Event] = [RunStarted(run_id="old", max_epochs=3, batch_size=64, n_samples=6400,
                                   world_size=2, time=t)]
    for e in (1, 2, 3):
        out.append(EpochEnded(run_id="old", epoch=e, world_size=2, time=t + 4 * e,
                              row={"train_loss": 1.0 / e, "dur": 4.0}))
        out.append(CheckpointSaved(run_id="old", epoch=e, step=0, url=f"file:///ck/old/{e}",
                                   seconds=0.012, time=t + 4 * e + 0.1))
    out.append(RunFinished(run_id="old", status="finished", epochs=3, time=t + 16))
    return out


def _recovering() -> list[Event]:
    t = T0 - 20
    out: list[Event] = [RunStarted(run_id="new", max_epochs=10, batch_size=64,
                                   n_samples=64000, world_size=3, time=t)]
    out += [RankStatus(run_id="new", rank=r, worker=f"tcp://127.0.0.1:4000{r + 1}",
                       state="training", time=t) for r in range(3)]
    out.append(EpochEnded(run_id="new", epoch=1, world_size=3, time=t + 4,
                          row={"train_loss": 0.41234, "valid_loss": 0.5, "dur": 4.0}))
    out.append(CheckpointSaved(run_id="new", epoch=1, step=0, url="file:///ck/new/1",
                               seconds=0.152, time=t + 4.2))
    out += [BatchProgress(run_id="new", epoch=1, batch=b, n_batches=1000,
                          samples_per_s=64e9, time=t + 4 + b / 250) for b in (250, 500, 750)]
    out += [RankStatus(run_id="new", rank=r, worker=f"tcp://127.0.0.1:4000{r + 1}",
                       state="failed", time=t + 8) for r in (0, 2, 1)]
    out.append(Notice(level="warning", time=t + 8.1, message=(
        "recovering: rank 1 lost on tcp://127.0.0.1:40002; restoring on 2 worker(s)")))
    return out


def _detached() -> list[dict[str, Any]]:
    """A detached run another user started on the same cluster, at epoch 2 of 6, as the
    bridge follows it from the cluster's run registry."""
    t = T0 - 60
    events: list[Event] = [RunStarted(run_id="theirs", max_epochs=6, batch_size=64,
                                      n_samples=12800, world_size=2, time=t)]
    events += [EpochEnded(run_id="theirs", epoch=e, world_size=2, time=t + 5 * e,
                          row={"train_loss": 0.9 / e, "dur": 5.0}) for e in (1, 2)]
    record = {"run_id": "theirs", "owner": "ada@lab", "net": "NeuralNetClassifier",
              "strategy": "ddp", "detached": True, "state": "running", "epoch": 2,
              "max_epochs": 6, "world_size": 2, "started": t}
    answers = {"scalekit_runs_list": [record],
               "scalekit_runs_events": {"run": record, "next": len(events),
                                        "events": [e.to_dict() for e in events]}}
    runs = ClusterRuns(lambda op, **_: answers[op], clock=lambda: T0)
    assert runs.poll(own={"old", "new"})
    return runs.runs()


def build() -> dict[str, Any]:
    return {
        "protocol": PROTOCOL, "type": "snapshot", "seq": 7, "time": T0 + 2,
        "cluster": _cluster(), "clusters": 1,
        "runs": [_run("old", _finished()), _run("new", _recovering())],
        "cluster_runs": _detached(),
    }


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Clock times in the texts are local: pin the zone so the fixture is the same
    wherever it is built."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_typescript_fixture_is_what_the_kernel_sends(utc: Any) -> None:
    built = json.loads(json.dumps(build(), allow_nan=False))
    if os.environ.get("SCALEKIT_UPDATE_FIXTURES") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(built, indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    assert FIXTURE.is_file(), f"{FIXTURE} missing: run with SCALEKIT_UPDATE_FIXTURES=1"
    assert json.loads(FIXTURE.read_text(encoding="utf-8")) == built, (
        "the kernel's snapshot changed: rerun with SCALEKIT_UPDATE_FIXTURES=1 and update "
        "extensions/test/view.test.ts if what the sidebar shows changed")
