"""Measure: short probe fits at a few allocations, on real workers.

Each probe trains a copy of the user's net (same module, optimizer and global batch;
no validation split, none of the user's callbacks, one checkpoint in a temporary
folder) for ``epochs`` short epochs of ``steps`` global batches each, drawn from the
data with a fixed seed, and records the best samples/s of the epochs after the first
(which pays one-off costs: the first optimizer step imports ``torch._dynamo``; the best
of the rest is the least disturbed by other load) and each rank's memory
(:class:`~scalekit.events.TrainingReport`'s ``state_bytes`` and ``peak_rss``).

World sizes come from one cluster per thread count: ``sk.fit(..., max_workers=W)`` trains
on the first ``W`` workers, so the sizes 1, 2, ... need no rescaling. Threads per worker
are fixed when a worker process starts, so each other thread count gets a temporary
local cluster (``scalekit.session.cluster(workers=..., threads_per_worker=T)``), closed
after its probes. The session passed in is used for its own thread count and is never
resized.

Peak RSS is sampled once a second by each rank and once at the end of its training, so
a short probe may miss a brief spike; the planner adds nothing for that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from scalekit.planner.budget import PlanError
from scalekit.planner.model import SHARDED, Measurement

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """One probe: ``workers`` ranks of ``threads`` threads training with ``strategy``."""

    strategy: str
    workers: int
    threads: int
    gpus: int = 0
    shard_size: int | None = None


def default_configs(*, cores: int, workers: Sequence[int] | None = None,
                    threads: Sequence[int] | None = None,
                    strategies: Sequence[str] = ("ddp", "fsdp"), gpus: int = 0
                    ) -> list[ProbeConfig]:
    """A small grid that identifies the scaling model's parameters.

    ``ddp`` at every (workers, threads) with ``workers x threads <= cores``; the other
    strategies only with 2+ workers (on one rank every strategy trains alike), ``hybrid``
    only where a mesh of 2+ replicas of 2+ shards fits. With ``gpus``, ``ddp`` on 1 and
    (if there are two GPUs) 2 GPU workers.
    """
    threads = sorted(set(threads or ([1, cores] if cores > 1 else [1])))
    workers = sorted(set(workers or [w for w in (1, 2, 4) if w <= max(cores, 2)]))
    out = []
    for t in threads:
        for w in workers:
            # within the cores; two single-thread ranks always (communication cost)
            if w * t > max(cores, 2) or (t > 1 and w * t > cores):
                continue
            if w == 1:  # one rank: every strategy trains alike; ddp is the reference
                out.append(ProbeConfig("ddp", w, t))
                continue
            for s in strategies:
                if s in ("ddp", "fsdp", "local_sgd"):
                    out.append(ProbeConfig(s, w, t))
                elif s == "hybrid" and w >= 4 and w % 2 == 0:
                    out.append(ProbeConfig(s, w, t, shard_size=2))
    for w in ([1, 2] if gpus >= 2 else [1] if gpus else []):
        out.append(ProbeConfig("ddp", w, 1, gpus=1))
    return out


def probe(
    net: Any, X: Any, y: Any = None, *, session: Any = None,
    configs: Sequence[ProbeConfig] | None = None, workers: Sequence[int] | None = None,
    threads: Sequence[int] | None = None, strategies: Sequence[str] = ("ddp", "fsdp"),
    steps: int = 20, epochs: int = 3, seed: int = 0, timeout: float = 600.0,
    cores: int | None = None, gpus: int = 0, on_result: Any = None,
) -> list[Measurement]:
    """Run short probe fits and return what they measured.

    Parameters
    ----------
    net : skorch.NeuralNet
        The net to plan for (it is copied, never trained).
    X, y :
        Training data; each probe uses ``steps x batch_size`` samples of it.
    session : ClusterSession, optional
        A running cluster to probe on (for its own threads per worker).
    configs : sequence of ProbeConfig, optional
        Exactly what to probe; by default :func:`default_configs` from ``workers``,
        ``threads``, ``strategies``, ``cores`` (default: this machine's) and ``gpus``.
    steps, epochs :
        Global batches per probe epoch, and epochs per probe. The first epoch pays
        one-off costs; the fastest of the others is the measurement (the one least
        disturbed by other load).
    timeout : float
        Seconds one probe fit may take.
    on_result : callable(Measurement), optional
        Called after each probe (progress in a notebook).
    """
    from scalekit.training.preflight import batch_size

    cores = cores or os.cpu_count() or 1
    configs = list(configs or default_configs(cores=cores, workers=workers, threads=threads,
                                              strategies=strategies, gpus=gpus))
    if not configs:
        raise PlanError("nothing to probe: no configuration fits the given workers, "
                        f"threads and {cores} cores")
    batch = batch_size(net)
    n = _len(X)
    size = min(n, max(steps, 1) * batch)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    Xs, ys = take(X, idx), (take(y, idx) if y is not None else None)
    results: list[Measurement] = []
    by_threads: dict[int, list[ProbeConfig]] = {}
    for c in configs:
        by_threads.setdefault(c.threads, []).append(c)
    with tempfile.TemporaryDirectory(prefix="scalekit-probe-") as folder:
        for t, group in sorted(by_threads.items()):
            need = max(c.workers for c in group)
            with _cluster_for(session, need, t) as probe_session:
                # sharded probes first: a process keeps some memory it freed, and ddp's
                # larger peak then hides the sharded probe's smaller one less
                for c in sorted(group, key=lambda c: (c.strategy not in SHARDED, c.workers)):
                    m = _probe_one(probe_session, net, Xs, ys, c, epochs=epochs, seed=seed,
                                   timeout=timeout, folder=folder)
                    logger.info("probe %s: %.0f samples/s", c, m.samples_per_s)
                    results.append(m)
                    if on_result is not None:
                        on_result(m)
    return results


@contextlib.contextmanager
def _cluster_for(session: Any, workers: int, threads: int) -> Iterator[Any]:
    if session is not None and _threads_of(session) == threads \
            and len(session.client.nthreads()) >= workers:
        yield session
        return
    from scalekit.session import cluster

    temporary = cluster(workers=workers, threads_per_worker=threads)
    try:
        temporary.wait_for_workers(workers, timeout=300)
        yield temporary
    finally:
        temporary.close()


def _threads_of(session: Any) -> int | None:
    counts = set(session.client.nthreads().values())
    return counts.pop() if len(counts) == 1 else None


def _probe_one(session: Any, net: Any, X: Any, y: Any, c: ProbeConfig, *, epochs: int,
               seed: int, timeout: float, folder: str) -> Measurement:
    import dask.config

    from scalekit.runs import fit
    from scalekit.training.rounds import warm_worker

    copy = probe_net(net, epochs=epochs, gpus=c.gpus)
    strategy = c.strategy if c.shard_size is None else _hybrid(c.shard_size)
    session.client.run(warm_worker)
    started = time.monotonic()
    # one checkpoint, after the last epoch (none at all is refused), in a temporary folder
    with dask.config.set({"scalekit.checkpoint.every-epochs": 1_000_000}):
        run = fit(copy, X, y, cluster=session, show=False, wait=False, seed=seed,
                  max_workers=c.workers, strategy=strategy,
                  checkpoint=os.path.join(folder, f"{time.time_ns()}"))
    try:
        run.wait(timeout)
    except TimeoutError as exc:
        raise PlanError(f"probe {c} took longer than {timeout:g}s; probe fewer steps "
                        "(steps=...) or give it more time (timeout=...)") from exc
    report = run.report
    if report is None or report.world_size != c.workers:
        raise PlanError(f"probe {c} ran on {getattr(report, 'world_size', 0)} workers; "
                        f"the cluster had {len(session.client.nthreads())}")
    # the best epoch after the first: the least disturbed by other load on the machine
    rates = [row.get("train_samples_per_s") or 0.0 for row in list(copy.history)[1:]]
    last = max(rates, default=0.0) or None
    logger.debug("probe %s took %.1fs", c, time.monotonic() - started)
    return Measurement.from_report(report, threads=c.threads, gpus=c.gpus,
                                   samples_per_s=last, shard_size=c.shard_size)


def _hybrid(shard_size: int) -> Any:
    from scalekit.training.strategies import Hybrid

    return Hybrid(shard_size=shard_size)


def probe_net(net: Any, *, epochs: int, gpus: int = 0) -> Any:
    """An untrained copy of ``net`` for a probe: same module, optimizer and batch; no
    validation split, no user callbacks, quiet."""
    from sklearn.base import clone

    copy = clone(net)
    params: dict[str, Any] = {"max_epochs": epochs, "train_split": None, "verbose": 0,
                              "callbacks": None, "warm_start": False}
    if gpus:
        params["device"] = "cuda"
    copy.set_params(**params)
    return copy


def _len(X: Any) -> int:
    from skorch.dataset import get_len

    return int(get_len(X))


def take(data: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of arrays, tensors, data frames, dicts of them, lists, or a Dataset."""
    if isinstance(data, dict):
        return {k: take(v, idx) for k, v in data.items()}
    if hasattr(data, "iloc"):
        return data.iloc[idx]
    if isinstance(data, np.ndarray) or hasattr(data, "index_select"):
        return data[idx]
    if isinstance(data, (list, tuple)):
        return [data[i] for i in idx]
    from torch.utils.data import Dataset, Subset

    if isinstance(data, Dataset):
        return Subset(data, idx.tolist())
    try:
        return data[idx]
    except Exception as exc:
        raise PlanError(f"cannot take a sample of {type(data).__name__} for the probes; "
                        "pass arrays, tensors or a torch Dataset") from exc
