"""Events for the JupyterLab snapshot tests: a running cluster's sample and a run."""

from __future__ import annotations

from typing import Any

from scalekit.events import (
    CheckpointSaved,
    ClusterSnapshot,
    EpochEnded,
    RunFinished,
    RunStarted,
    WorkerStats,
)

GIB = 2**30


def cluster_snapshot(n: int = 2, *, cpu: float = 50.0,
                     adaptive: tuple[int, int] | None = None, **kw: Any) -> ClusterSnapshot:
    """``n`` one-thread workers, each at ``cpu`` % and half a GiB of a 2 GiB limit."""
    workers = tuple(
        WorkerStats(name=f"w{i}", address=f"tcp://127.0.0.1:{4000 + i}", nthreads=1,
                    cpu=cpu, memory=GIB // 2, memory_limit=2 * GIB)
        for i in range(n)
    )
    return ClusterSnapshot(
        backend="local", status="running", workers=workers, requested=n,
        adaptive=adaptive, dashboard_link="http://127.0.0.1:8787/status",
        scheduler_address="tcp://127.0.0.1:4000", **kw)


def run_events(run_id: str = "run-1", *, epochs: int = 2, max_epochs: int = 5,
               finished: bool = False) -> list[Any]:
    events: list[Any] = [RunStarted(run_id=run_id, max_epochs=max_epochs, batch_size=64,
                                    n_samples=1024, world_size=2)]
    for epoch in range(1, epochs + 1):
        events.append(EpochEnded(run_id=run_id, epoch=epoch, world_size=2,
                                 row={"train_loss": 1.0 / epoch, "valid_loss": 2.0 / epoch,
                                      "valid_acc": 0.5, "dur": 1.5}))
        events.append(CheckpointSaved(run_id=run_id, epoch=epoch, step=0,
                                      url=f"file:///ckpt/{run_id}/epoch-{epoch}",
                                      seconds=0.1))
    if finished:
        events.append(RunFinished(run_id=run_id, status="finished", epochs=epochs))
    return events
