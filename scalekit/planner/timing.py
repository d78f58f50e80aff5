"""What a probe fit's timeline says: per-sample work, per-epoch and per-fit overhead.

A probe is a real ``sk.fit``. Its history gives each epoch's ``dur`` (training and
validation on rank 0), its ``EpochEnded`` events the times the epochs ended, and the call
its wall time. :class:`Observed` holds them and splits the wall time into the parts
the :mod:`~scalekit.planner.overhead` model needs:

    wall = F + E * (steady + between)          steady = c + n * t

``steady`` is an epoch's duration once warm (the mean of the epochs after the first),
``between`` what two epochs' ends are apart beyond it (the checkpoint, the epoch-end
callbacks and messages), ``F`` what is left (start-up, the first epoch's warm-up, the
end) less the data transfer. ``c``, the part of an epoch's duration that does not grow
with its samples (creating the batch order, the loss all-reduce, setting up
validation), comes from one allocation probed on ``n`` samples and on a few batches
(:func:`epoch_constant`); it moves from the per-sample time to the per-epoch overhead,
where a longer epoch does not multiply it.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import numpy as np

from scalekit.planner.model import Measurement


def data_bytes(data: Any) -> int:
    """Bytes of arrays, tensors, data frames, or dicts and lists of them (0: unknown)."""
    if data is None:
        return 0
    if isinstance(data, dict):
        return sum(data_bytes(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(data_bytes(v) for v in data) if all(
            hasattr(v, "nbytes") or hasattr(v, "element_size") for v in data) else 0
    if hasattr(data, "element_size") and hasattr(data, "numel"):  # a torch tensor
        return int(data.element_size() * data.numel())
    if hasattr(data, "memory_usage") and hasattr(data, "iloc"):  # pandas
        usage = data.memory_usage(index=False, deep=True)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    nbytes = getattr(data, "nbytes", None)
    if isinstance(nbytes, (int, np.integer)):
        return int(nbytes)
    return 0


@dataclasses.dataclass(frozen=True)
class Observed:
    """A probe fit's timeline: each epoch's ``dur`` (training and validation, rank 0),
    the times the epochs ended (``EpochEnded``), the wall time of ``sk.fit`` and how
    long sending its data took."""

    config: Any  # the ProbeConfig
    report: Any  # TrainingReport
    n_samples: int
    durs: tuple[float, ...]
    ends: tuple[float, ...]
    wall: float
    transfer: float = 0.0
    send_rate: float = 0.0

    @property
    def steady(self) -> float:
        """An epoch's duration once warm: the mean of the epochs after the first (the
        mean, not the median: a busy machine's interruptions belong to the expected
        time of an epoch, and short intervals dodge them more often than long ones)."""
        return statistics.fmean(self.durs[1:] or self.durs)

    @property
    def between(self) -> float:
        """What two epochs' ends are apart beyond the later epoch's duration (the
        checkpoint, callbacks, messages): the mean over the epochs after the first."""
        gaps = [b - a - d for a, b, d in zip(self.ends, self.ends[1:], self.durs[1:],
                                             strict=False)]
        return max(0.0, statistics.fmean(gaps)) if gaps else 0.0

    def measurement(self, per_epoch: float = 0.0) -> Measurement:
        """Split the wall time into per-sample work, per-epoch and per-fit overhead;
        ``per_epoch`` is the part of an epoch's duration that does not grow with its
        samples (:func:`epoch_constant`)."""
        work = self.steady - min(per_epoch, 0.25 * self.steady)
        # what the wall time leaves after the epochs, once warm, and the data transfer
        fixed = self.wall - len(self.durs) * (self.steady + self.between) - self.transfer
        c = self.config
        return Measurement.from_report(
            self.report, threads=c.threads, gpus=c.gpus, shard_size=c.shard_size,
            samples_per_s=self.n_samples / work,
            epoch_overhead_s=self.between + self.steady - work,
            fit_overhead_s=max(0.0, fixed), send_bytes_per_s=self.send_rate)


def epoch_constant(full: Observed, small: Observed) -> float:
    """Seconds of an epoch's duration that do not grow with its samples (creating the
    batch order, the epoch's loss all-reduce, setting up validation), from one
    allocation's steady epochs over ``n`` samples and over a few batches: with
    ``d = c + n t``, ``c = d_small - n_small t``. (The small epochs are mostly ``c``,
    so its estimate is about as noisy as they are; from two large samples it would be
    the difference of two noisy numbers, amplified.)"""
    dn = full.n_samples - small.n_samples
    if dn <= 0:
        return 0.0
    per_sample = (full.steady - small.steady) / dn
    if per_sample <= 0:  # noise swamped the difference: no evidence of a constant
        return 0.0
    return min(max(0.0, small.steady - small.n_samples * per_sample), small.steady)


__all__ = ["Observed", "data_bytes", "epoch_constant"]
