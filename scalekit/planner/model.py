"""A simple scaling model fitted to probe measurements (pure: numbers in, numbers out).

**Throughput inside an epoch.** The time an epoch spends per sample of the data (its
training step and, when the net holds a validation split back, its share of the
validation), with ``W`` workers of ``T`` threads each and strategy ``s``, is modelled as

    t(W, T, s) = a / (W * speedup(T)) + b + c_s * log2(W)
    speedup(T) = 1 / ((1 - p) + p / T)                 (Amdahl: p = parallel fraction)

``a`` is the compute a sample costs on one thread, shared out over the workers and
sped up by threads; ``b`` is the per-sample cost that does not shrink (Python and
optimizer work per step, reading batches); ``c_s`` is what communication adds as the
world grows (one all-reduce per step for ``ddp``; an all-gather and a reduce-scatter per
shard unit for ``fsdp``, so its ``c`` is larger). On GPU workers (``gpus=1``) the compute
term is ``a_gpu / W`` and communication has its own ``c_s`` (NCCL, not the CPU
workers' shared memory or gloo). For a fixed ``p`` the model is linear in its
coefficients, fitted by non-negative least squares on *relative* errors; ``p`` is chosen
by a grid search.

**A whole fit** adds what does not scale with the samples
(:mod:`scalekit.planner.overhead`): a fixed cost per fit, a cost per epoch and the time
to send the data to the workers, so that :meth:`ScalingModel.fit_seconds` is the wall
time of ``sk.fit`` and :meth:`ScalingModel.predict` its end-to-end samples/s.

**Memory per rank.** From the measured bytes of parameters + gradients + optimizer state
a rank held (``state_bytes``) and its peak resident memory (``peak_rss``)::

    ddp, local_sgd:  full state             + overhead_s
    fsdp:            full state / W         + overhead_s
    hybrid:          full state / shard     + overhead_s   (shard = shard-group size)

``overhead_s`` (the process, its libraries, activations, DDP's gradient buckets, the one
layer fsdp gathers at a time) is the measured ``peak_rss - state_bytes`` per strategy.
Activations shrink a little as ``W`` grows (smaller per-rank batches); the model keeps
them constant, which errs on the safe side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from scalekit.planner.overhead import OverheadModel, fit_overhead, fit_seconds
from scalekit.training.strategies import resolve

EXACT = ("ddp", "fsdp", "hybrid")
STRATEGIES = (*EXACT, "local_sgd")
SHARDED = ("fsdp", "hybrid")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One probe fit: its allocation and what it measured.

    ``samples_per_s`` is the steady rate inside an epoch, in samples of the data per
    second (all workers together; validation included when the net validates);
    ``state_bytes`` and ``peak_rss`` are per rank (the largest over the ranks). The
    timings outside the epochs' per-sample work are in seconds: ``epoch_overhead_s``
    per epoch (the checkpoint, the epoch's end), ``fit_overhead_s`` once per fit
    (start-up, rendezvous, the first epoch's warm-up, the end), and
    ``send_bytes_per_s`` is how fast data reached the workers (bytes x workers / s).
    Zero means not measured.
    """

    strategy: str
    workers: int
    threads: int
    samples_per_s: float
    state_bytes: int = 0
    peak_rss: int = 0
    gpus: int = 0  # per worker
    shard_size: int | None = None  # hybrid: the shard-group size asked for
    epoch_overhead_s: float = 0.0
    fit_overhead_s: float = 0.0
    send_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Measurement.strategy: got {self.strategy!r}, expected one of "
                             f"{', '.join(STRATEGIES)}")
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Measurement.{name}: got {value!r}, expected an integer >= 1")
        if not self.samples_per_s > 0 or not math.isfinite(self.samples_per_s):
            raise ValueError(f"Measurement.samples_per_s: got {self.samples_per_s!r}, "
                             "expected a positive number")
        for name in ("epoch_overhead_s", "fit_overhead_s", "send_bytes_per_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Measurement.{name}: got {value!r}, expected a number >= 0")

    @property
    def shard(self) -> int:
        """Ranks one copy of the state is spread over."""
        return shard_of(self.strategy, self.workers, self.shard_size)

    @property
    def timed(self) -> bool:
        """Whether the probe measured the costs outside the per-sample work."""
        return bool(self.fit_overhead_s or self.epoch_overhead_s)

    @classmethod
    def from_report(cls, report: Any, *, threads: int, gpus: int = 0,
                    samples_per_s: float | None = None, shard_size: int | None = None,
                    **timings: float) -> Measurement:
        """From a run's ``TrainingReport`` (``samples_per_s`` overrides the report's, e.g.
        with the steady rate of the epochs after the first; ``timings`` are the
        ``*_overhead_s`` and ``send_bytes_per_s`` fields)."""
        return cls(
            strategy=report.strategy, workers=int(report.world_size), threads=int(threads),
            samples_per_s=float(samples_per_s if samples_per_s else report.samples_per_s),
            state_bytes=int(max(report.state_bytes, default=0)),
            peak_rss=int(max(report.peak_rss, default=0)), gpus=int(gpus),
            shard_size=shard_size, **{k: float(v) for k, v in timings.items()},
        )


def shard_of(strategy: str, workers: int, shard_size: int | None = None) -> int:
    """Over how many ranks one copy of the state is sharded (1: replicated), as the
    strategy says (``shard_size``: hybrid's shard group, default 2)."""
    options = {"shard_size": shard_size or 2} if strategy == "hybrid" else {}
    return resolve(strategy, **options).state_shards(workers)


def amdahl(threads: float, p: float) -> float:
    """Speed-up of ``threads`` threads for a parallel fraction ``p``."""
    return 1.0 / ((1.0 - p) + p / threads)


@dataclasses.dataclass(frozen=True)
class ThroughputModel:
    """``t(W, T, s) = a / (W speedup(T)) + b + c_s log2 W`` (seconds per sample); on GPU
    workers ``a_gpu / W + b + c_gpu_s log2 W``."""

    a: float
    b: float
    p: float
    comm: dict[str, float]
    a_gpu: float | None = None
    comm_gpu: dict[str, float] = dataclasses.field(default_factory=dict)
    rms_error: float = 0.0  # relative, over the measurements it was fitted to
    notes: tuple[str, ...] = ()

    def seconds_per_sample(self, strategy: str, workers: int, threads: int = 1,
                           gpus: int = 0) -> float:
        if gpus:
            if self.a_gpu is None:
                raise ValueError("no GPU measurement: cannot predict GPU throughput")
            compute = self.a_gpu / workers
        else:
            compute = self.a / (workers * amdahl(threads, self.p))
        return compute + self.b + self.comm_of(strategy, gpus) * math.log2(workers)

    def samples_per_s(self, strategy: str, workers: int, threads: int = 1, gpus: int = 0
                      ) -> float:
        return 1.0 / self.seconds_per_sample(strategy, workers, threads, gpus)

    def comm_of(self, strategy: str, gpus: int = 0) -> float:
        if gpus:
            if strategy in self.comm_gpu:
                return self.comm_gpu[strategy]
            if self.comm_gpu:
                return borrowed(strategy, self.comm_gpu)
            # no two GPU workers measured: the CPU workers' cost, the cautious guess
        if strategy in self.comm:
            return self.comm[strategy]
        return borrowed(strategy, self.comm)


def borrowed(strategy: str, by_strategy: dict[str, float]) -> float:
    """An unmeasured strategy's cost, from the closest measured one."""
    order = {"hybrid": ("fsdp", "ddp"), "fsdp": ("hybrid", "ddp"),
             "local_sgd": ("ddp",), "ddp": ("local_sgd", "fsdp", "hybrid")}
    for other in order.get(strategy, ()):
        if other in by_strategy:
            return by_strategy[other]
    return max(by_strategy.values(), default=0.0)


def fit_throughput(measurements: Sequence[Measurement], *, p_grid: int = 101
                   ) -> ThroughputModel:
    """Fit :class:`ThroughputModel` to ``measurements`` (at least one)."""
    ms = list(measurements)
    if not ms:
        raise ValueError("fit_throughput needs at least one measurement")
    cpu_comm = sorted({m.strategy for m in ms if m.workers > 1 and not m.gpus})
    gpu_comm = sorted({m.strategy for m in ms if m.workers > 1 and m.gpus})
    cpu_threads = {m.threads for m in ms if not m.gpus}
    has_gpu = any(m.gpus for m in ms)
    notes = []
    # candidate parallel fractions: without two thread counts p is not identifiable;
    # assume threads do not help (the conservative choice) and say so
    if len(cpu_threads) > 1:
        grid = np.linspace(0.0, 1.0, p_grid)
    else:
        grid = np.array([0.0])
        if cpu_threads:
            notes.append(f"only {next(iter(cpu_threads))} thread(s) per worker measured: "
                         "assumed more threads do not help")
    if not cpu_comm and cpu_threads:
        notes.append("no multi-worker measurement: communication cost unknown (assumed 0)")
    t = np.array([1.0 / m.samples_per_s for m in ms])
    best: tuple[float, np.ndarray, float] | None = None
    for p in grid:
        A = _design(ms, cpu_comm, gpu_comm, p, has_gpu)
        coef, _ = _nnls(A / t[:, None], np.ones(len(ms)))
        rel = A @ coef / t - 1.0
        err = float(np.sqrt(np.mean(rel**2)))
        if best is None or err < best[0] - 1e-12:
            best = (err, coef, float(p))
    assert best is not None
    err, coef, p = best
    a, b = float(coef[0]), float(coef[1])
    comm = {s: float(coef[2 + i]) for i, s in enumerate(cpu_comm)}
    gpu_at = 2 + len(cpu_comm)
    a_gpu = float(coef[gpu_at]) if has_gpu else None
    comm_gpu = {s: float(coef[gpu_at + 1 + i]) for i, s in enumerate(gpu_comm)}
    if err > 0.2:
        notes.append(f"the measurements disagree with the model (rms error {err:.0%}): "
                     "noisy probes (a busy machine), or more threads or workers slowed "
                     "training down; probe again with more steps before trusting the plan")
    if cpu_threads:
        for s in STRATEGIES:
            if s not in comm and s != "local_sgd":
                notes.append(f"{s} not measured on more than one worker: its communication "
                             f"cost is borrowed ({borrowed(s, comm):.3g} s/sample per doubling)")
    if has_gpu and not gpu_comm:
        notes.append("one GPU worker measured: communication between GPU workers is "
                     "assumed to cost what it costs the CPU workers")
    return ThroughputModel(a=a, b=b, p=p, comm=comm, a_gpu=a_gpu, comm_gpu=comm_gpu,
                           rms_error=err, notes=tuple(notes))


def _design(ms: Sequence[Measurement], cpu_comm: Sequence[str], gpu_comm: Sequence[str],
            p: float, gpu: bool) -> np.ndarray:
    """Columns: a, b, CPU c_s..., then (with GPUs) a_gpu, GPU c_s..."""
    gpu_at = 2 + len(cpu_comm)
    A = np.zeros((len(ms), gpu_at + (1 + len(gpu_comm) if gpu else 0)))
    for i, m in enumerate(ms):
        A[i, 1] = 1.0
        if m.gpus:
            A[i, gpu_at] = 1.0 / m.workers
            if m.workers > 1:
                A[i, gpu_at + 1 + list(gpu_comm).index(m.strategy)] = math.log2(m.workers)
        else:
            A[i, 0] = 1.0 / (m.workers * amdahl(m.threads, p))
            if m.workers > 1:
                A[i, 2 + list(cpu_comm).index(m.strategy)] = math.log2(m.workers)
    return A


def _nnls(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import nnls

    coef, residual = nnls(A, b)
    return coef, float(residual)


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Peak resident memory per rank: ``state / shard + overhead[strategy]`` (bytes)."""

    full_state: float  # params + grads + optimizer state of one whole copy of the model
    overhead: dict[str, float]

    def state_per_rank(self, strategy: str, workers: int, shard_size: int | None = None
                       ) -> float:
        return self.full_state / shard_of(strategy, workers, shard_size)

    def per_rank(self, strategy: str, workers: int, shard_size: int | None = None) -> float:
        return self.state_per_rank(strategy, workers, shard_size) + self.overhead_of(strategy)

    def overhead_of(self, strategy: str) -> float:
        if strategy in self.overhead:
            return self.overhead[strategy]
        return max(self.overhead.values(), default=0.0)  # unmeasured: the largest seen


def fit_memory(measurements: Iterable[Measurement]) -> MemoryModel:
    """Fit :class:`MemoryModel` (medians, robust to one noisy probe)."""
    ms = [m for m in measurements if m.state_bytes > 0]
    if not ms:
        return MemoryModel(full_state=0.0, overhead={})
    full = float(np.median([m.state_bytes * m.shard for m in ms]))
    overhead: dict[str, float] = {}
    for s in sorted({m.strategy for m in ms}):
        extra = [m.peak_rss - m.state_bytes for m in ms if m.strategy == s and m.peak_rss]
        if extra:
            overhead[s] = max(0.0, float(np.median(extra)))
    return MemoryModel(full_state=full, overhead=overhead)


@dataclasses.dataclass(frozen=True)
class ScalingModel:
    """Throughput, overhead and memory, fitted together; what the solver predicts with."""

    throughput: ThroughputModel
    memory: MemoryModel
    measured: tuple[Measurement, ...] = ()
    overhead: OverheadModel = dataclasses.field(default_factory=OverheadModel)

    @property
    def notes(self) -> tuple[str, ...]:
        return self.throughput.notes + self.overhead.notes

    @property
    def gpu_threads(self) -> tuple[int, ...]:
        """Threads per worker the GPU workers were measured with."""
        return tuple(sorted({m.threads for m in self.measured if m.gpus}))

    def predict(self, strategy: str, workers: int, threads: int = 1, gpus: int = 0,
                shard_size: int | None = None, *, epochs: int | None = None,
                n_samples: int | None = None, data_bytes: int = 0) -> tuple[float, float]:
        """``(samples/s, peak bytes per rank)``: with ``epochs`` and ``n_samples`` the
        fit's end-to-end samples/s (``epochs x n_samples`` over its wall time), else the
        steady rate inside an epoch."""
        if epochs and n_samples:
            seconds = self.fit_seconds(strategy, workers, threads, gpus, epochs=epochs,
                                       n_samples=n_samples, data_bytes=data_bytes)
            sps = epochs * n_samples / seconds
        else:
            sps = self.throughput.samples_per_s(strategy, workers, threads, gpus)
        return sps, self.memory.per_rank(strategy, workers, shard_size)

    def fit_seconds(self, strategy: str, workers: int, threads: int = 1, gpus: int = 0, *,
                    epochs: int, n_samples: int, data_bytes: int = 0) -> float:
        """Predicted wall time of ``sk.fit`` for ``epochs`` epochs over ``n_samples``
        samples (``data_bytes`` of data sent to every worker)."""
        return fit_seconds(self.throughput.seconds_per_sample(strategy, workers, threads, gpus),
                           self.overhead, strategy, workers, gpus, epochs=epochs,
                           n_samples=n_samples, data_bytes=data_bytes)

    def extrapolation(self, workers: int, threads: int, gpus: int = 0) -> str:
        """A note when an allocation lies beyond what was measured ('' otherwise)."""
        same = [m for m in self.measured if bool(m.gpus) == bool(gpus)]
        if not same:
            return "not measured" if gpus else ""
        notes = []
        if workers > max(m.workers for m in same):
            notes.append(f"extrapolated beyond {max(m.workers for m in same)} workers")
        if not gpus and threads > max(m.threads for m in same):
            notes.append(f"extrapolated beyond {max(m.threads for m in same)} threads")
        return "; ".join(notes)


def fit_scaling_model(measurements: Sequence[Measurement]) -> ScalingModel:
    """Fit throughput, overhead and memory models to probe measurements."""
    ms = tuple(measurements)
    return ScalingModel(throughput=fit_throughput(ms), memory=fit_memory(ms), measured=ms,
                        overhead=fit_overhead(ms))
