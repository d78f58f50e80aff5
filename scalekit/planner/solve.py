"""Choose an allocation: enumerate candidates, predict them, solve a small MILP (pure).

A *candidate* is ``workers x threads per worker (x GPUs per worker) x strategy`` (and,
for ``hybrid``, a shard-group size). Each is predicted by a fitted
:class:`~scalekit.planner.model.ScalingModel` (samples/s, peak memory per rank) and
priced (cost per hour; with ``epochs`` and ``n_samples`` also the fit's duration and
cost). With ``epochs`` and ``n_samples`` its samples/s is the fit's end-to-end rate
(``epochs x n_samples`` over the predicted wall time, overhead included), so a short fit
is not sent to more workers than its start-up costs repay. A GPU worker holds one GPU
(scalekit pins one worker to each) and is predicted at the thread count the GPU workers
were measured with. The choice is a binary one-hot vector ``x`` solved with
:func:`scipy.optimize.milp`:

    maximise  sum_i x_i * samples_per_s_i         (objective="throughput")
    minimise  sum_i x_i * fit_cost_i              (objective="cost")
    s.t.      sum_i x_i = 1
              sum_i x_i * workers_i * threads_i   <= budget.cores
              sum_i x_i * workers_i               <= budget.max_workers
              sum_i x_i * workers_i * gpus_i      <= budget.gpus
              sum_i x_i * memory_per_rank_i       <= budget.memory_per_worker
              sum_i x_i * workers_i * memory_i    <= budget.total_memory
              sum_i x_i * cost_per_hour_i         <= budget.max_cost_per_hour
              sum_i x_i * fit_cost_i              <= budget.max_cost
              sum_i x_i * fit_seconds_i           <= deadline

The same constraints, checked one candidate at a time, explain every row of the table
(why a candidate is not feasible). Ties go to the simpler allocation (fewer cores, then
fewer workers, then ddp before the sharded strategies).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from scalekit.planner.budget import Budget, PlanError
from scalekit.planner.model import EXACT, STRATEGIES, ScalingModel, shard_of

OBJECTIVES = ("throughput", "cost")
_ORDER = {"ddp": 0, "local_sgd": 1, "hybrid": 2, "fsdp": 3}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One allocation with its predictions and whether the budget allows it."""

    strategy: str
    workers: int
    threads: int
    gpus: int = 0  # per worker
    shard_size: int | None = None  # hybrid only
    samples_per_s: float = 0.0  # end-to-end for the fit when timed, else steady
    memory_per_rank: float = 0.0  # bytes
    cost_per_hour: float = 0.0
    fit_seconds: float | None = None  # with epochs and n_samples
    fit_cost: float | None = None
    steady_samples_per_s: float = 0.0  # inside an epoch, without the fit's overhead
    overhead_seconds: float | None = None  # of fit_seconds: outside the per-sample work
    feasible: bool = True
    why_not: tuple[str, ...] = ()
    note: str = ""

    @property
    def cores(self) -> int:
        return self.workers * self.threads

    @property
    def label(self) -> str:
        gpu = f" x {self.gpus} GPU" if self.gpus else ""
        strategy = self.strategy
        if self.strategy == "hybrid":
            replicas, shard = shard_groups(self.workers, self.shard_size)
            strategy = f"hybrid {replicas}x{shard}"
        return f"{self.workers} x {self.threads} thread{'s' if self.threads > 1 else ''}" \
               f"{gpu}, {strategy}"

    def strategy_object(self) -> Any:
        """The ``scalekit.strategies`` object ``sk.fit(strategy=...)`` takes."""
        from scalekit.training.strategies import resolve

        if self.strategy == "hybrid":
            return resolve("hybrid", shard_size=self.shard_size or 2)
        return resolve(self.strategy)


def shard_groups(workers: int, shard_size: int | None) -> tuple[int, int]:
    from scalekit.training.strategies import hybrid_mesh_shape

    return hybrid_mesh_shape(workers, shard_size or 2)


@dataclasses.dataclass(frozen=True)
class Solution:
    """The chosen candidate and every candidate considered (feasible or not)."""

    choice: Candidate
    candidates: tuple[Candidate, ...]
    objective: str
    deadline: float | None = None


def enumerate_candidates(
    model: ScalingModel, budget: Budget, *, strategies: Sequence[str] = EXACT,
    epochs: int | None = None, n_samples: int | None = None, deadline: float | None = None,
    data_bytes: int = 0,
) -> list[Candidate]:
    """Every allocation within the budget's worker and thread ranges, predicted and
    checked against each limit."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise PlanError(f"unknown strategies {unknown or list(strategies)}; choose from "
                        f"{', '.join(STRATEGIES)}")
    shapes = [(t, 0) for t in budget.thread_options()]
    if budget.gpus:  # GPU workers at the threads they were measured with
        shapes += [(t, 1) for t in model.gpu_threads or (1,)]
    fit = (epochs, n_samples, data_bytes)
    out = []
    for workers in range(1, budget.worker_limit() + 1):
        for threads, gpus in shapes:
            for strategy in strategies:
                for shard in _shard_sizes(strategy, workers):
                    out.append(_candidate(model, budget, strategy, workers, threads, gpus,
                                          shard, fit, deadline))
    return out


def _shard_sizes(strategy: str, workers: int) -> list[int | None]:
    if workers == 1:  # one rank: every strategy is plain training; ddp stands for them
        return [None] if strategy == "ddp" else []
    if strategy != "hybrid":
        return [None]
    # a hybrid mesh differs from fsdp and ddp only with 2+ replicas of 2+ shards
    return [d for d in range(2, workers // 2 + 1) if workers % d == 0]


def _candidate(model: ScalingModel, budget: Budget, strategy: str, workers: int, threads: int,
               gpus: int, shard: int | None, fit: tuple[int | None, int | None, int],
               deadline: float | None) -> Candidate:
    why: list[str] = []
    note = model.extrapolation(workers, threads, gpus)
    if gpus and model.throughput.a_gpu is None:
        return Candidate(strategy, workers, threads, gpus, shard, feasible=False,
                         why_not=("GPU throughput not measured",), note="not measured")
    epochs, n_samples, data_bytes = fit
    steady, memory = model.predict(strategy, workers, threads, gpus, shard)
    sps = steady
    cost_h = budget.cost_per_hour(workers, threads, gpus)
    fit_s = fit_cost = overhead = None
    if epochs and n_samples:
        fit_s = model.fit_seconds(strategy, workers, threads, gpus, epochs=epochs,
                                  n_samples=n_samples, data_bytes=data_bytes)
        sps = epochs * n_samples / fit_s
        overhead = fit_s - epochs * n_samples / steady
        fit_cost = cost_h * fit_s / 3600.0
    if budget.cores is not None and workers * threads > budget.cores:
        why.append(f"{workers * threads} cores > {budget.cores}")
    if budget.max_workers is not None and workers > budget.max_workers:
        why.append(f"{workers} workers > {budget.max_workers}")
    if gpus and workers * gpus > budget.gpus:
        why.append(f"{workers * gpus} GPUs > {budget.gpus}")
    if budget.memory_per_worker is not None and memory > budget.memory_per_worker:
        why.append(f"{_size(memory)}/rank > {_size(budget.memory_per_worker)}")
    if budget.total_memory is not None and workers * memory > budget.total_memory:
        why.append(f"{_size(workers * memory)} in all > {_size(budget.total_memory)}")
    if budget.max_cost_per_hour is not None and cost_h > budget.max_cost_per_hour:
        why.append(f"{cost_h:.2f}/h > {budget.max_cost_per_hour:.2f}/h")
    if budget.max_cost is not None and fit_cost is not None and fit_cost > budget.max_cost:
        why.append(f"fit costs {fit_cost:.2f} > {budget.max_cost:.2f}")
    if deadline is not None and fit_s is not None and fit_s > deadline:
        why.append(f"takes {_duration(fit_s)} > deadline {_duration(deadline)}")
    return Candidate(strategy, workers, threads, gpus, shard, samples_per_s=sps,
                     memory_per_rank=memory, cost_per_hour=cost_h, fit_seconds=fit_s,
                     fit_cost=fit_cost, steady_samples_per_s=steady,
                     overhead_seconds=overhead, feasible=not why, why_not=tuple(why),
                     note=note)


def solve(
    model: ScalingModel, budget: Budget, *, objective: str = "throughput",
    strategies: Sequence[str] = EXACT, epochs: int | None = None,
    n_samples: int | None = None, deadline: float | None = None, data_bytes: int = 0,
) -> Solution:
    """Pick the allocation that maximises throughput (or minimises the fit's cost)
    within ``budget`` (and ``deadline`` seconds for ``epochs`` over ``n_samples``).

    With ``epochs`` and ``n_samples`` (and ``data_bytes``, the size of the data every
    worker receives) throughput is the fit's end-to-end samples/s."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if objective not in OBJECTIVES:
        raise PlanError(f"objective: got {objective!r}, expected one of {', '.join(OBJECTIVES)}")
    timed = bool(epochs and n_samples)
    if (objective == "cost" or deadline is not None or budget.max_cost is not None) \
            and not timed:
        raise PlanError("a cost objective, a deadline or max_cost need the number of epochs "
                        "and of training samples")
    if objective == "cost" and not budget.priced:
        raise PlanError("objective='cost' needs prices: set cost_per_worker_hour, "
                        "cost_per_core_hour or cost_per_gpu_hour in the Budget")
    cands = enumerate_candidates(model, budget, strategies=strategies, epochs=epochs,
                                 n_samples=n_samples, deadline=deadline,
                                 data_bytes=data_bytes)
    n = len(cands)
    col = {k: np.array([v(c) for c in cands], dtype=float) for k, v in {
        "sps": lambda c: c.samples_per_s,
        "cores": lambda c: c.cores,
        "workers": lambda c: c.workers,
        "gpus": lambda c: c.workers * c.gpus,
        "memory": lambda c: c.memory_per_rank,
        "total_memory": lambda c: c.workers * c.memory_per_rank,
        "cost_h": lambda c: c.cost_per_hour,
        "fit_cost": lambda c: c.fit_cost or 0.0,
        "fit_s": lambda c: c.fit_seconds or 0.0,
    }.items()}
    rows, upper = [np.ones(n)], [1.0]
    for key, limit in (("cores", budget.cores), ("workers", budget.max_workers),
                       ("gpus", budget.gpus), ("memory", budget.memory_per_worker),
                       ("total_memory", budget.total_memory),
                       ("cost_h", budget.max_cost_per_hour), ("fit_cost", budget.max_cost),
                       ("fit_s", deadline)):
        if limit is not None:
            rows.append(col[key])
            upper.append(float(limit))
    lower = [1.0] + [-np.inf] * (len(rows) - 1)
    measurable = np.array([0.0 if (c.gpus and not c.samples_per_s) else 1.0 for c in cands])
    if objective == "throughput":
        c = -col["sps"] / max(col["sps"].max(), 1e-300)
    else:
        c = col["fit_cost"] / max(col["fit_cost"].max(), 1e-300)
    result = milp(c, constraints=LinearConstraint(np.vstack(rows), lower, upper),
                  integrality=np.ones(n), bounds=Bounds(np.zeros(n), measurable),
                  options={"mip_rel_gap": 0.0})
    if result.status != 0 or result.x is None:
        raise PlanError(_infeasible_message(cands, budget, deadline))
    best = c[int(np.argmax(result.x))]
    # among (near-)equal optima, the simplest allocation: fewer cores, fewer workers,
    # no GPU, ddp before the sharded strategies
    tied = [i for i in range(n) if cands[i].feasible and measurable[i]
            and c[i] <= best + 1e-9 * max(abs(best), 1e-12)]
    choice = cands[min(tied, key=lambda i: _simplicity(cands[i]))]
    assert choice.feasible, choice  # the table's checks and the MILP's agree
    return Solution(choice=choice, candidates=tuple(cands), objective=objective,
                    deadline=deadline)


def _simplicity(c: Candidate) -> tuple[int, ...]:
    return (c.cores, c.workers, c.gpus, _ORDER.get(c.strategy, 9), -(c.shard_size or 0))


def _infeasible_message(cands: Sequence[Candidate], budget: Budget, deadline: float | None
                        ) -> str:
    """Which limits rule everything out, with the best each could be met by."""
    lines = ["no allocation satisfies the budget:"]
    measured = [c for c in cands if c.samples_per_s]
    if not measured:
        return "no allocation can be predicted: nothing measured for these candidates"
    within_cores = [c for c in measured if not budget.cores or c.cores <= budget.cores]
    pool = within_cores or measured
    if budget.memory_per_worker is not None:
        least = min(pool, key=lambda c: c.memory_per_rank)
        if least.memory_per_rank > budget.memory_per_worker:
            lines.append(f"- memory: the least a rank needs is {_size(least.memory_per_rank)} "
                         f"({least.label}) but memory_per_worker is "
                         f"{_size(budget.memory_per_worker)}; allow more memory, more "
                         "workers (to shard over) or a sharded strategy")
    if budget.total_memory is not None:
        least = min(pool, key=lambda c: c.workers * c.memory_per_rank)
        if least.workers * least.memory_per_rank > budget.total_memory:
            lines.append(f"- total memory: at least {_size(least.workers * least.memory_per_rank)}"
                         f" ({least.label}) but total_memory is {_size(budget.total_memory)}")
    if budget.max_cost_per_hour is not None:
        least = min(pool, key=lambda c: c.cost_per_hour)
        if least.cost_per_hour > budget.max_cost_per_hour:
            lines.append(f"- cost: the cheapest allocation costs {least.cost_per_hour:.2f}/h "
                         f"({least.label}) > max_cost_per_hour {budget.max_cost_per_hour:.2f}")
    if deadline is not None:
        fastest = min(pool, key=lambda c: c.fit_seconds or math.inf)
        if (fastest.fit_seconds or math.inf) > deadline:
            lines.append(f"- deadline: the fastest allocation takes "
                         f"{_duration(fastest.fit_seconds or math.inf)} ({fastest.label}) > "
                         f"{_duration(deadline)}; allow more cores/workers or more time")
    if budget.max_cost is not None:
        cheapest = min(pool, key=lambda c: c.fit_cost or math.inf)
        if (cheapest.fit_cost or math.inf) > budget.max_cost:
            lines.append(f"- fit cost: the cheapest fit costs {cheapest.fit_cost:.2f} "
                         f"({cheapest.label}) > max_cost {budget.max_cost:.2f}")
    if len(lines) == 1:  # no single limit is impossible alone: they conflict together
        closest = min(measured, key=lambda c: (len(c.why_not), -c.samples_per_s))
        lines.append(f"- the limits conflict; the closest candidate, {closest.label}, "
                     f"fails on: {'; '.join(closest.why_not)}")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "forever"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s < 10:  # short fits: their overhead is a tenth of a second or so
        return f"{s:.2g} s"
    return f"{s:.1f} s"


__all__ = ["Budget", "Candidate", "PlanError", "Solution", "enumerate_candidates", "solve",
           "shard_of"]
