"""What a fit costs besides its per-sample work (pure: numbers in, numbers out).

A user sees the wall time of ``sk.fit``, not the rate inside an epoch. With ``E`` epochs
of ``N`` samples, ``B`` bytes of data and ``W`` workers, the model of that wall time is

    fit_seconds = F(W, s) + B * W * beta + E * (N * t(W, T, s) + e(W, s))
    F(W, s) = f + f_gpu + f_s * (W - 1)          once per fit
    e(W, s) = g + g_gpu + g_s * (W - 1)          once per epoch

``t`` is the per-sample time of :class:`~scalekit.planner.model.ThroughputModel`.
``F`` is the fixed cost of a fit: checks in the notebook, starting one task per worker,
the rendezvous and process group, the strategy's set-up, the first epoch's warm-up and,
at the end, gathering the trained state. ``e`` is paid at every epoch's end: the
checkpoint, the epoch-end collectives, the progress message. ``f_s`` and ``g_s`` are
what each further worker adds with strategy ``s`` (fsdp sets up and saves shards; its
``g`` is larger), ``f_gpu`` and ``g_gpu`` what a GPU worker adds. ``beta`` is the time to
send one byte to one worker (the data goes to every worker once). The end-to-end
samples/s is ``E * N / fit_seconds``.

Every term comes from the probe fits, which are real ``sk.fit`` runs: the per-sample time
from the duration of the epochs after the first, ``e`` from the time between two epochs'
ends that the epoch itself did not take, ``F`` from what the wall time leaves after
``E`` such epochs, ``beta`` from sending a block of the data to the probe's workers.
``f``, ``f_gpu``, ``f_s`` (and the ``g``) are fitted by non-negative least squares on
absolute seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scalekit.planner.model import Measurement


@dataclasses.dataclass(frozen=True)
class OverheadModel:
    """Seconds per fit and per epoch outside the per-sample work, and the data transfer.

    All zeros (the default) is a model of steady-state training: no overhead measured.
    """

    per_fit: float = 0.0
    per_fit_worker: dict[str, float] = dataclasses.field(default_factory=dict)
    per_epoch: float = 0.0
    per_epoch_worker: dict[str, float] = dataclasses.field(default_factory=dict)
    gpu_per_fit: float = 0.0
    gpu_per_epoch: float = 0.0
    seconds_per_byte: float = 0.0  # to one worker
    notes: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return bool(self.per_fit or self.per_epoch or self.per_fit_worker
                    or self.per_epoch_worker)

    def fit(self, strategy: str, workers: int, gpus: int = 0) -> float:
        """Seconds a fit pays once (without sending the data)."""
        return (self.per_fit + (self.gpu_per_fit if gpus else 0.0)
                + _slope(strategy, self.per_fit_worker) * (workers - 1))

    def epoch(self, strategy: str, workers: int, gpus: int = 0) -> float:
        """Seconds every epoch pays besides its samples."""
        return (self.per_epoch + (self.gpu_per_epoch if gpus else 0.0)
                + _slope(strategy, self.per_epoch_worker) * (workers - 1))

    def transfer(self, workers: int, data_bytes: int) -> float:
        """Seconds to send ``data_bytes`` to each of ``workers``."""
        return self.seconds_per_byte * data_bytes * workers

    def total(self, strategy: str, workers: int, gpus: int = 0, *, epochs: int,
              data_bytes: int = 0) -> float:
        """Everything a fit of ``epochs`` epochs spends outside its per-sample work."""
        return (self.fit(strategy, workers, gpus) + self.transfer(workers, data_bytes)
                + epochs * self.epoch(strategy, workers, gpus))


def _slope(strategy: str, by_strategy: dict[str, float]) -> float:
    from scalekit.planner.model import borrowed  # model imports this module

    if strategy in by_strategy:
        return by_strategy[strategy]
    return borrowed(strategy, by_strategy)


def fit_overhead(measurements: Sequence[Measurement]) -> OverheadModel:
    """Fit :class:`OverheadModel` to the probes that timed their fits."""
    timed = [m for m in measurements if m.timed]
    rates = [m.send_bytes_per_s for m in measurements if m.send_bytes_per_s > 0]
    # seconds per byte to one worker; the median resists one disturbed measurement
    beta = float(np.median([1.0 / r for r in rates])) if rates else 0.0
    notes = []
    if not rates:
        notes.append("data transfer to the workers not measured: not counted")
    if not timed:
        notes.append("no probe timed its whole fit: predictions are steady-state rates "
                     "inside an epoch, without the per-fit and per-epoch overhead")
        return OverheadModel(seconds_per_byte=beta, notes=tuple(notes))
    strategies = sorted({m.strategy for m in timed if m.workers > 1})
    gpu = any(m.gpus for m in timed) and not all(m.gpus for m in timed)
    A = np.zeros((len(timed), 1 + (1 if gpu else 0) + len(strategies)))
    for i, m in enumerate(timed):
        A[i, 0] = 1.0
        if gpu and m.gpus:
            A[i, 1] = 1.0
        if m.workers > 1:
            A[i, 1 + (1 if gpu else 0) + strategies.index(m.strategy)] = m.workers - 1
    per_fit = _nnls(A, np.array([m.fit_overhead_s for m in timed]))
    per_epoch = _nnls(A, np.array([m.epoch_overhead_s for m in timed]))
    first = 2 if gpu else 1
    base_fit, base_epoch = float(per_fit[0]), float(per_epoch[0])
    gpu_fit = float(per_fit[1]) if gpu else 0.0
    gpu_epoch = float(per_epoch[1]) if gpu else 0.0
    if all(m.gpus for m in timed):  # only GPU workers timed: the base is theirs
        base_fit, gpu_fit, base_epoch, gpu_epoch = 0.0, base_fit, 0.0, base_epoch
        notes.append("only GPU workers timed: CPU workers' overhead not measured")
    if not strategies:
        notes.append("no multi-worker fit timed: what further workers add to the overhead "
                     "is unknown (assumed 0)")
    return OverheadModel(
        per_fit=base_fit, per_epoch=base_epoch, gpu_per_fit=gpu_fit, gpu_per_epoch=gpu_epoch,
        per_fit_worker={s: float(per_fit[first + i]) for i, s in enumerate(strategies)},
        per_epoch_worker={s: float(per_epoch[first + i]) for i, s in enumerate(strategies)},
        seconds_per_byte=beta, notes=tuple(notes),
    )


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    coef, _ = nnls(A, b)
    return coef


def fit_seconds(seconds_per_sample: float, overhead: OverheadModel, strategy: str,
                workers: int, gpus: int = 0, *, epochs: int, n_samples: int,
                data_bytes: int = 0) -> float:
    """The wall time of a fit of ``epochs`` epochs over ``n_samples`` samples."""
    if epochs < 1 or n_samples < 1:
        raise ValueError(f"a fit needs epochs >= 1 and n_samples >= 1, got {epochs}, "
                         f"{n_samples}")
    work = epochs * n_samples * seconds_per_sample
    seconds = work + overhead.total(strategy, workers, gpus, epochs=epochs,
                                    data_bytes=data_bytes)
    assert math.isfinite(seconds) and seconds > 0, seconds
    return seconds





def describe(overhead: OverheadModel) -> str:
    """One line for the plan's explanation, e.g. ``0.21 s per fit (+0.04 s per further
    worker, ddp), 9 ms per epoch, data sent at 700 MiB/s per worker``."""
    if not overhead.measured and not overhead.seconds_per_byte:
        return "overhead: not measured (steady-state rates)"

    def seconds(s: float) -> str:
        return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"

    def growth(by_strategy: dict[str, float]) -> str:
        parts = [f"{seconds(v)} {s}" for s, v in sorted(by_strategy.items()) if v >= 5e-4]
        return f" (+ per further worker: {', '.join(parts)})" if parts else ""

    out = [f"{seconds(overhead.per_fit)} per fit{growth(overhead.per_fit_worker)}",
           f"{seconds(overhead.per_epoch)} per epoch{growth(overhead.per_epoch_worker)}"]
    if overhead.gpu_per_fit or overhead.gpu_per_epoch:
        out.append(f"GPU workers +{seconds(overhead.gpu_per_fit)} per fit, "
                   f"+{seconds(overhead.gpu_per_epoch)} per epoch")
    if overhead.seconds_per_byte:
        out.append(f"data sent at {1 / overhead.seconds_per_byte / 2**20:,.0f} MiB/s per worker")
    return "overhead: " + ", ".join(out)


__all__ = ["OverheadModel", "describe", "fit_overhead", "fit_seconds"]
