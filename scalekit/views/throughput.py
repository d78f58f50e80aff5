"""Samples per second, defined once for every view.

The views measure the rate themselves, from what the events say: where training stood
(:class:`~scalekit.events.BatchProgress`'s epoch and batch) and when the kernel heard it
(the event's timestamp), with :class:`~scalekit.events.RunStarted`'s global batch size
and sample count to turn steps into samples. A rank's own figure
(``BatchProgress.samples_per_s``) is not used: right after a recovery it divided the
batches of a resumed epoch by an epoch start it never saw (about 1e-9 s), and the
sidebar showed 64000000000 samples/s.

Two figures, each named where it is shown:

- **while a run trains**: samples trained over the last :data:`WINDOW_S` seconds of
  progress reports, divided by the time between the first and the last of them
  ("30,502 samples/s (last 10 s)"). Validation and checkpoints between epochs count,
  as they take the fit's time. A recovery or a resize starts a new window, so the rate
  is the one of the current world size and never spans the pause.
- **when it is over**: the epochs trained, in samples, over the run's whole wall time,
  start-up and recoveries included ("15,925 samples/s over the whole run"): what the
  fit cost, lower than the rate while training.

Neither is computed over less than :data:`MIN_SPAN_S` seconds: a division by zero or
near-zero time (two reports that arrived together) gives ``None``, shown as ``–``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

from scalekit.events import BatchProgress, RunStarted
from scalekit.views.fmt import fmt_rate

__all__ = ["MIN_SPAN_S", "WINDOW_S", "Throughput", "rate_between", "throughput_text"]

WINDOW_S = 10.0
MIN_SPAN_S = 1.0


def rate_between(samples: float, seconds: float | None,
                 min_span: float = MIN_SPAN_S) -> float | None:
    """``samples / seconds``, or ``None`` when the time is too short to say.

    Parameters
    ----------
    samples : float
        Samples trained in the span (negative: a rollback, no rate).
    seconds : float or None
        Length of the span; zero, negative, NaN or under ``min_span`` gives ``None``
        rather than an absurd figure.
    min_span : float
        The shortest span a rate is computed over.

    Returns
    -------
    float or None
    """
    if seconds is None or not math.isfinite(seconds) or not math.isfinite(samples):
        return None
    if seconds < max(min_span, 1e-9) or samples < 0:
        return None
    return samples / seconds


@dataclasses.dataclass
class Throughput:
    """The progress reports of one run, folded into a windowed rate.

    Attributes
    ----------
    batch_size, n_samples : int or None
        From :class:`~scalekit.events.RunStarted` (the global batch, the whole set).
    n_batches : int or None
        Batches per epoch, from the latest progress report.
    points : deque of (float, int)
        ``(time, steps done since the run's epoch 0)`` of the current window, oldest
        first; emptied when training restarts (a recovery, a resize) or goes back.
    """

    batch_size: int | None = None
    n_samples: int | None = None
    n_batches: int | None = None
    points: deque[tuple[float, int]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=512))

    def started(self, event: RunStarted) -> None:
        """A run (or its resumption) began: nothing trained yet in this window."""
        self.batch_size = int(event.batch_size) if event.batch_size > 0 else None
        self.n_samples = int(event.n_samples) if event.n_samples > 0 else None
        self.points.clear()

    def progress(self, event: BatchProgress) -> None:
        """Add a progress report; a report behind the newest one starts a new window."""
        if event.n_batches <= 0:
            return
        if self.n_batches is not None and event.n_batches != self.n_batches:
            self.points.clear()  # another sharding of the epoch: steps are not comparable
        self.n_batches = int(event.n_batches)
        steps = int(event.epoch) * self.n_batches + int(event.batch)
        if self.points and (steps < self.points[-1][1] or event.time < self.points[-1][0]):
            self.points.clear()  # rolled back (or a stale report): measure afresh
        self.points.append((float(event.time), steps))
        newest = event.time
        while len(self.points) > 2 and newest - self.points[1][0] >= WINDOW_S:
            self.points.popleft()  # keep the oldest point that still spans the window

    def restart(self) -> None:
        """Training resumed after a pause (recovery, resize): the window starts again."""
        self.points.clear()

    @property
    def epoch_samples(self) -> int | None:
        """Samples trained per epoch: batches x global batch size, at most the set."""
        if self.n_batches is None or self.batch_size is None:
            return self.n_samples
        per_epoch = self.n_batches * self.batch_size
        return min(per_epoch, self.n_samples) if self.n_samples else per_epoch

    @property
    def span_s(self) -> float:
        """Seconds between the oldest and the newest report of the window."""
        return self.points[-1][0] - self.points[0][0] if len(self.points) > 1 else 0.0

    @property
    def rate(self) -> float | None:
        """Samples per second over the window, ``None`` until it spans :data:`MIN_SPAN_S`."""
        per_epoch = self.epoch_samples
        if len(self.points) < 2 or not per_epoch or not self.n_batches:
            return None
        steps = self.points[-1][1] - self.points[0][1]
        return rate_between(steps * per_epoch / self.n_batches, self.span_s)

    def overall(self, epochs_trained: int, seconds: float | None) -> float | None:
        """The run's mean: ``epochs_trained`` epochs in samples over ``seconds``."""
        per_epoch = self.epoch_samples
        if not per_epoch or epochs_trained <= 0:
            return None
        return rate_between(float(epochs_trained * per_epoch), seconds)


def throughput_text(throughput: Throughput, *, running: bool, epochs_trained: int,
                    elapsed_s: float | None) -> str:
    """The throughput as every view shows it, saying what the figure measures.

    ``"30,502 samples/s (last 10 s)"`` while training, ``"– samples/s (measuring)"``
    until the window spans :data:`MIN_SPAN_S`, ``"15,925 samples/s over the whole run
    (start-up included)"`` once the run is over, ``"– samples/s"`` when it trained
    nothing.
    """
    if running:
        rate = throughput.rate
        if rate is None:
            return "– samples/s (measuring)"
        return f"{fmt_rate(rate)} (last {max(round(throughput.span_s), 1)} s)"
    overall = throughput.overall(epochs_trained, elapsed_s)
    if overall is None:
        return "– samples/s"
    return f"{fmt_rate(overall)} over the whole run (start-up included)"
