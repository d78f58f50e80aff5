"""Synthetic training events, as the controller publishes them, for the widget tests."""

from __future__ import annotations

from scalekit.events import EpochEnded, Event, RankStatus, RunFinished, RunStarted


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
