"""A simple scaling model fitted to probe measurements (pure: numbers in, numbers out).

**Throughput.** The time a fit spends per training sample, with ``W`` workers of ``T``
threads each and strategy ``s``, is modelled as

    t(W, T, s) = a / (W * speedup(T)) + b + c_s * log2(W)
    speedup(T) = 1 / ((1 - p) + p / T)                 (Amdahl: p = parallel fraction)

``a`` is the compute a sample costs on one thread, shared out over the workers and
sped up by threads; ``b`` is the per-sample cost that does not shrink (Python and
optimizer work per step, reading batches); ``c_s`` is what communication adds as the
world grows (one all-reduce per step for ``ddp``; an all-gather and a reduce-scatter per
shard unit for ``fsdp``, so its ``c`` is larger). On GPU workers (``gpus=1``) the compute
term is ``a_gpu / W`` instead. Samples/s is ``1 / t``. For a fixed ``p`` the model is
linear in its coefficients, fitted by non-negative least squares on *relative* errors;
``p`` is chosen by a grid search.

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

from scalekit.training.strategies import hybrid_mesh_shape

EXACT = ("ddp", "fsdp", "hybrid")
STRATEGIES = (*EXACT, "local_sgd")
SHARDED = ("fsdp", "hybrid")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One probe fit: its allocation and what it measured.

    ``samples_per_s`` is the global training throughput; ``state_bytes`` and
    ``peak_rss`` are per rank (the largest over the ranks).
    """

    strategy: str
    workers: int
    threads: int
    samples_per_s: float
    state_bytes: int = 0
    peak_rss: int = 0
    gpus: int = 0  # per worker
    shard_size: int | None = None  # hybrid: the shard-group size asked for

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

    @property
    def shard(self) -> int:
        """Ranks one copy of the state is spread over."""
        return shard_of(self.strategy, self.workers, self.shard_size)

    @classmethod
    def from_report(cls, report: Any, *, threads: int, gpus: int = 0,
                    samples_per_s: float | None = None, shard_size: int | None = None
                    ) -> Measurement:
        """From a run's ``TrainingReport`` (``samples_per_s`` overrides the report's, e.g.
        with the last epoch's throughput, which excludes one-off start-up costs)."""
        return cls(
            strategy=report.strategy, workers=int(report.world_size), threads=int(threads),
            samples_per_s=float(samples_per_s if samples_per_s else report.samples_per_s),
            state_bytes=int(max(report.state_bytes, default=0)),
            peak_rss=int(max(report.peak_rss, default=0)), gpus=int(gpus),
            shard_size=shard_size,
        )


def shard_of(strategy: str, workers: int, shard_size: int | None = None) -> int:
    """Over how many ranks one copy of the state is sharded (1: replicated)."""
    if strategy == "fsdp":
        return workers
    if strategy == "hybrid":
        return hybrid_mesh_shape(workers, shard_size or 2)[1]
    return 1


def amdahl(threads: float, p: float) -> float:
    """Speed-up of ``threads`` threads for a parallel fraction ``p``."""
    return 1.0 / ((1.0 - p) + p / threads)


@dataclasses.dataclass(frozen=True)
class ThroughputModel:
    """``t(W, T, s) = a / (W speedup(T)) + b + c_s log2 W`` (seconds per sample)."""

    a: float
    b: float
    p: float
    comm: dict[str, float]
    a_gpu: float | None = None
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
        return compute + self.b + self.comm_of(strategy) * math.log2(workers)

    def samples_per_s(self, strategy: str, workers: int, threads: int = 1, gpus: int = 0
                      ) -> float:
        return 1.0 / self.seconds_per_sample(strategy, workers, threads, gpus)

    def comm_of(self, strategy: str) -> float:
        if strategy in self.comm:
            return self.comm[strategy]
        return _borrowed_comm(strategy, self.comm)


def _borrowed_comm(strategy: str, comm: dict[str, float]) -> float:
    """An unmeasured strategy's communication cost, from the closest measured one."""
    order = {"hybrid": ("fsdp", "ddp"), "fsdp": ("hybrid", "ddp"),
             "local_sgd": ("ddp",), "ddp": ("local_sgd", "fsdp", "hybrid")}
    for other in order.get(strategy, ()):
        if other in comm:
            return comm[other]
    return max(comm.values(), default=0.0)


def fit_throughput(measurements: Sequence[Measurement], *, p_grid: int = 101
                   ) -> ThroughputModel:
    """Fit :class:`ThroughputModel` to ``measurements`` (at least one)."""
    ms = list(measurements)
    if not ms:
        raise ValueError("fit_throughput needs at least one measurement")
    strategies = sorted({m.strategy for m in ms if m.workers > 1})
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
    if not strategies:
        notes.append("no multi-worker measurement: communication cost unknown (assumed 0)")
    t = np.array([1.0 / m.samples_per_s for m in ms])
    best: tuple[float, np.ndarray, float] | None = None
    for p in grid:
        A = _design(ms, strategies, p, has_gpu)
        coef, _ = _nnls(A / t[:, None], np.ones(len(ms)))
        rel = A @ coef / t - 1.0
        err = float(np.sqrt(np.mean(rel**2)))
        if best is None or err < best[0] - 1e-12:
            best = (err, coef, float(p))
    assert best is not None
    err, coef, p = best
    a, b = float(coef[0]), float(coef[1])
    comm = {s: float(coef[2 + i]) for i, s in enumerate(strategies)}
    a_gpu = float(coef[-1]) if has_gpu else None
    if err > 0.2:
        notes.append(f"the measurements disagree with the model (rms error {err:.0%}): "
                     "noisy probes (a busy machine), or more threads or workers slowed "
                     "training down; probe again with more steps before trusting the plan")
    for s in STRATEGIES:
        if s not in comm and s != "local_sgd":
            notes.append(f"{s} not measured on more than one worker: its communication cost "
                         f"is borrowed ({_borrowed_comm(s, comm):.3g} s/sample per doubling)")
    return ThroughputModel(a=a, b=b, p=p, comm=comm, a_gpu=a_gpu, rms_error=err,
                           notes=tuple(notes))


def _design(ms: Sequence[Measurement], strategies: Sequence[str], p: float, gpu: bool
            ) -> np.ndarray:
    cols = 2 + len(strategies) + (1 if gpu else 0)
    A = np.zeros((len(ms), cols))
    for i, m in enumerate(ms):
        if m.gpus:
            A[i, -1] = 1.0 / m.workers
        else:
            A[i, 0] = 1.0 / (m.workers * amdahl(m.threads, p))
        A[i, 1] = 1.0
        if m.workers > 1:
            A[i, 2 + list(strategies).index(m.strategy)] = math.log2(m.workers)
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
    """Throughput and memory, fitted together; what the solver predicts with."""

    throughput: ThroughputModel
    memory: MemoryModel
    measured: tuple[Measurement, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        return self.throughput.notes

    def predict(self, strategy: str, workers: int, threads: int = 1, gpus: int = 0,
                shard_size: int | None = None) -> tuple[float, float]:
        """``(samples/s, peak bytes per rank)``."""
        return (self.throughput.samples_per_s(strategy, workers, threads, gpus),
                self.memory.per_rank(strategy, workers, shard_size))

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
    """Fit throughput and memory models to probe measurements."""
    ms = tuple(measurements)
    return ScalingModel(throughput=fit_throughput(ms), memory=fit_memory(ms), measured=ms)
