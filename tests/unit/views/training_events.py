"""Synthetic training events, as the controller publishes them, for the widget tests."""

from __future__ import annotations

from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    Event,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    RunStarted,
)


def rows(n: int, *, dur: float = 2.0) -> list[dict[str, float | bool]]:
    """``n`` skorch-like history rows (floats, as the rank reporter sends them)."""
    out: list[dict[str, float | bool]] = []
    best = {"train_loss": float("inf"), "valid_loss": float("inf"), "valid_acc": -1.0}
    for e in range(1, n + 1):
        tl, vl = 1.0 / e, 1.2 / e + (0.3 if e == 3 else 0.0)  # epoch 3 is no valid best
        acc = min(0.5 + 0.1 * e, 1.0)
        out.append({
            "epoch": float(e), "train_loss": tl, "valid_loss": vl, "valid_acc": acc,
            "dur": dur, "train_samples_per_s": 500.0 + e, "train_batch_count": 10.0,
            "train_loss_best": tl < best["train_loss"],
            "valid_loss_best": vl < best["valid_loss"],
            "valid_acc_best": acc > best["valid_acc"],
        })
        best["train_loss"] = min(best["train_loss"], tl)
        best["valid_loss"] = min(best["valid_loss"], vl)
        best["valid_acc"] = max(best["valid_acc"], acc)
    return out


def run_events(
    run_id: str = "run-1", *, epochs: int = 4, max_epochs: int = 4, world: int = 2,
    grow_at: int | None = None, status: str | None = "finished", message: str = "",
) -> list[Event]:
    """A whole run: start, ranks, epochs (world size ``world`` + 1 from ``grow_at``), end."""
    events: list[Event] = [RunStarted(run_id=run_id, max_epochs=max_epochs, batch_size=64,
                                      n_samples=1000, world_size=world)]
    events += [RankStatus(run_id=run_id, rank=r, worker=f"tcp://10.0.0.{r}:4000",
                          state="training") for r in range(world)]
    for row in rows(epochs):
        e = int(row["epoch"])
        size = world + 1 if grow_at is not None and e >= grow_at else world
        events.append(EpochEnded(run_id=run_id, epoch=e, row=dict(row), world_size=size))
    if status is not None:
        events.append(RunFinished(run_id=run_id, status=status, epochs=epochs,
                                  message=message))
    return events


def elastic_events(run_id: str = "run-1", *, finished: bool = False) -> list[Event]:
    """A run that grows, loses a rank and recovers from an earlier checkpoint.

    Epochs 1-2 on 2 ranks, a resize to 3 after epoch 2, epochs 3-4 on 3 ranks, a
    checkpoint after every odd epoch (and one inside epoch 4), rank 2 fails in epoch 5,
    training recovers on 2 ranks from the checkpoint at epoch 3 (so epoch 4's row is
    re-run), then epoch 4 ends again.
    """
    t = 1_000.0
    out: list[Event] = [RunStarted(run_id=run_id, max_epochs=6, batch_size=64,
                                   n_samples=1000, world_size=2, time=t)]
    out += [RankStatus(run_id=run_id, rank=r, worker=f"w{r}", state="training", time=t)
            for r in range(2)]
    history = rows(6)

    def epoch(e: int, size: int) -> None:
        out.append(EpochEnded(run_id=run_id, epoch=e, row=dict(history[e - 1]),
                              world_size=size, time=t + 10 * e))

    def checkpoint(e: int, step: int = 0) -> None:
        out.append(CheckpointSaved(run_id=run_id, epoch=e, step=step, url=f"file:///ck/{e}-{step}",
                                   seconds=0.012, nbytes=3 * 2**20, time=t + 10 * e + 1 + step))

    out.append(BatchProgress(run_id=run_id, epoch=0, batch=5, n_batches=10,
                             samples_per_s=100.0, time=t + 5))
    epoch(1, 2)
    checkpoint(1)
    epoch(2, 2)
    out.append(Resized(run_id=run_id, old=2, new=3, epoch=2, reason="workers joined",
                       time=t + 22))
    out += [RankStatus(run_id=run_id, rank=r, worker=f"w{r}", state="training",
                       generation=1, time=t + 23) for r in range(3)]
    epoch(3, 3)
    checkpoint(3)
    checkpoint(3, step=5)
    epoch(4, 3)
    out.append(BatchProgress(run_id=run_id, epoch=4, batch=5, n_batches=10,
                             samples_per_s=100.0, time=t + 45))
    out.append(RankStatus(run_id=run_id, rank=2, worker="w2", state="failed", generation=1,
                          time=t + 46))
    out.append(Recovered(run_id=run_id, reason="rank 2 lost", epoch=3, step=5, world_size=2,
                         lost_steps=10, downtime_s=4.5, time=t + 50))
    epoch(4, 2)
    if finished:
        epoch(5, 2)
        epoch(6, 2)
        out.append(RunFinished(run_id=run_id, status="finished", epochs=6, time=t + 70))
    return out
