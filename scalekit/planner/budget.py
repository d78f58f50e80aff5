"""What a plan may use: cores, workers, GPUs, memory, prices (pure, validated)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from scalekit.errors import ScalekitError


class PlanError(ScalekitError, ValueError):
    """No allocation satisfies the budget, or the planner was asked something it cannot
    answer. The message says which limit rules the candidates out and by how much."""


def _bytes(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            return int(parse_bytes(value))
        except ValueError as exc:
            raise PlanError(f"Budget.{field}: got {value!r}, expected bytes or a size "
                            "such as '2GiB'") from exc
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PlanError(f"Budget.{field}: got {value!r}, expected a positive size")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a plan may use. Unset (``None``) limits do not constrain.

    Parameters
    ----------
    cores : int
        CPU cores for all workers together (``workers x threads <= cores``).
    max_workers : int
        Largest number of workers.
    gpus : int
        GPUs for all workers together. A GPU worker holds one GPU (scalekit starts one
        worker per GPU, each pinned to its own), so this is also the most GPU workers a
        plan may use; with ``gpus`` the planner considers GPU workers beside CPU ones.
    memory_per_worker : int or str
        Memory one worker (one rank) may use, e.g. ``"4GiB"``.
    total_memory : int or str
        Memory of all workers together (e.g. one machine's RAM for a local cluster).
    cost_per_worker_hour, cost_per_core_hour, cost_per_gpu_hour : float
        Prices; a candidate costs ``workers x (worker + threads x core + gpus x gpu)``
        per hour.
    max_cost_per_hour : float
        Spending rate limit.
    max_cost : float
        Limit for the whole fit (needs the number of epochs and samples).
    threads : tuple of int
        Threads per worker to consider (default: 1, 2, 4, ... up to ``cores``).
    """

    cores: int | None = None
    max_workers: int | None = None
    gpus: int = 0
    memory_per_worker: int | str | None = None
    total_memory: int | str | None = None
    cost_per_worker_hour: float = 0.0
    cost_per_core_hour: float = 0.0
    cost_per_gpu_hour: float = 0.0
    max_cost_per_hour: float | None = None
    max_cost: float | None = None
    threads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("cores", "max_workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise PlanError(f"Budget.{name}: got {value!r}, expected an integer >= 1")
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise PlanError(f"Budget.gpus: got {self.gpus!r}, expected an integer >= 0")
        for name in ("memory_per_worker", "total_memory"):
            object.__setattr__(self, name, _bytes(getattr(self, name), name))
        for name in ("cost_per_worker_hour", "cost_per_core_hour", "cost_per_gpu_hour"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise PlanError(f"Budget.{name}: got {value!r}, expected a price >= 0")
        for name in ("max_cost_per_hour", "max_cost"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise PlanError(f"Budget.{name}: got {value!r}, expected a positive amount")
        if self.threads is not None:
            threads = tuple(self.threads)
            if not threads or any(not isinstance(t, int) or t < 1 for t in threads):
                raise PlanError(f"Budget.threads: got {self.threads!r}, expected integers >= 1")
            object.__setattr__(self, "threads", tuple(sorted(set(threads))))
        if self.cores is None and self.max_workers is None and self.max_cost_per_hour is None:
            raise PlanError("Budget: set at least one of cores, max_workers or "
                            "max_cost_per_hour, or the candidates have no bound")

    @classmethod
    def of(cls, budget: Budget | Mapping[str, Any] | None) -> Budget:
        """A Budget from a Budget, a dict of its fields, or ``None`` (this machine)."""
        if isinstance(budget, Budget):
            return budget
        if budget is None:
            return cls.this_machine()
        if isinstance(budget, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(budget) - names)
            if unknown:
                raise PlanError(f"Budget has no field {unknown[0]!r}; fields: "
                                f"{', '.join(sorted(names))}")
            return cls(**budget)
        raise PlanError(f"budget must be a Budget, a dict or None, got {type(budget).__name__}")

    @classmethod
    def this_machine(cls, *, gpus: int | None = None) -> Budget:
        """This machine's cores, memory and GPUs (for a local cluster); ``gpus``
        overrides the count (e.g. the GPU workers of a running cluster)."""
        import os

        import psutil

        if gpus is None:
            gpus = visible_gpus()
        return cls(cores=os.cpu_count() or 1, total_memory=psutil.virtual_memory().total,
                   gpus=gpus)

    @property
    def priced(self) -> bool:
        return any((self.cost_per_worker_hour, self.cost_per_core_hour, self.cost_per_gpu_hour))

    def cost_per_hour(self, workers: int, threads: int, gpus: int = 0) -> float:
        return workers * (self.cost_per_worker_hour + threads * self.cost_per_core_hour
                          + gpus * self.cost_per_gpu_hour)

    def thread_options(self) -> tuple[int, ...]:
        if self.threads is not None:
            return self.threads
        top = self.cores or 1
        return tuple(2**k for k in range(int(math.log2(top)) + 1)) + (
            (top,) if top & (top - 1) else ())

    def worker_limit(self) -> int:
        limits = [x for x in (self.max_workers, self.cores) if x]
        if not limits and self.max_cost_per_hour and self.cost_per_worker_hour:
            limits.append(int(self.max_cost_per_hour // self.cost_per_worker_hour))
        return max(1, min(limits) if limits else 64)


def visible_gpus() -> int:
    """GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected; no CUDA context
    is created: torch counts through NVML)."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a torch without CUDA, or a broken driver: no GPU to plan for
        return 0
