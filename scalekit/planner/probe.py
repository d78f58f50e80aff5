"""Measure: short probe fits at a few allocations, on real workers.

Each probe is a real ``sk.fit`` of a copy of the user's net (same module, optimizer,
global batch and validation split; none of the user's callbacks; checkpoints on the
configured schedule, in a temporary folder) for ``epochs`` short epochs over a sample of
``steps`` global batches of the data, drawn with a fixed seed. From its timeline
(:class:`~scalekit.events.EpochEnded` times, the history's ``dur`` of each epoch, the
wall time of the call) it records:

* the steady samples/s inside an epoch: samples of the sample per second, from the
  mean duration of the epochs after the first (which pays one-off costs);
* the per-epoch overhead: the time between two epochs' ends that the epoch itself did
  not take (the checkpoint, the epoch-end callbacks and messages), the mean likewise,
  plus the part of an epoch's duration that does not grow with its samples (one
  allocation, the reference, is probed again on a few batches for twice the epochs to
  tell them apart);
* the per-fit overhead: what the wall time leaves after ``epochs`` steady epochs
  (start-up, rendezvous, the first epoch's warm-up, gathering the state at the end),
  less the time to send the sample to the workers (:mod:`.timing` does the arithmetic);
* how fast data reaches the workers: a block of the data (up to 8 MiB) sent to them,
  as the fit sends its data, and timed;
* each rank's memory (:class:`~scalekit.events.TrainingReport`'s ``state_bytes`` and
  ``peak_rss``).

World sizes come from one cluster per thread count: ``sk.fit(..., max_workers=W)`` trains
on the first ``W`` workers, so the sizes 1, 2, ... need no rescaling. Threads per worker
are fixed when a worker process starts, so each other thread count gets a temporary
local cluster (``scalekit.session.cluster(workers=..., threads_per_worker=T)``), closed
after its probes. GPU probes (a cuda net) run on GPU workers: workers that advertise the
Dask resource ``GPU``, one GPU each, as ``sk.cluster(gpus=...)`` starts them; the session
is used when all its workers are GPU workers, else a temporary ``sk.cluster(gpus=W)``.
The session passed in is never resized. Every worker is warmed before its first probe
(imports, the first optimizer step; CUDA on GPU workers; then a throw-away one-epoch fit
on a few batches), and so is the notebook (a copy of the net is initialized once), so
the probes time what a fit pays once the cluster and the notebook have run one.

Peak RSS is sampled once a second by each rank and once at the end of its training, so
a short probe may miss a brief spike; the planner adds nothing for that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from scalekit.planner.budget import PlanError
from scalekit.planner.model import SHARDED, Measurement
from scalekit.planner.timing import Observed, data_bytes, epoch_constant

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"  # the Dask resource a GPU worker advertises (one per GPU)
SEND_BLOCK = 8 * 2**20  # bytes sent to time the data transfer: past the latency-bound sizes


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
                    strategies: Sequence[str] = ("ddp", "fsdp"), gpus: int = 0,
                    gpu_threads: int | None = None) -> list[ProbeConfig]:
    """A small grid that identifies the scaling model's parameters.

    ``ddp`` at every (workers, threads) with ``workers x threads <= cores``; the other
    strategies only with 2+ workers (on one rank every strategy trains alike), ``hybrid``
    only where a mesh of 2+ replicas of 2+ shards fits. With ``gpus``, ``ddp`` on 1 and
    (if there are two GPUs) 2 GPU workers of ``gpu_threads`` threads (default: a fair
    share of the cores).
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
    share = gpu_threads or max(1, cores // max(1, gpus))
    for w in ([1, 2] if gpus >= 2 else [1] if gpus else []):
        out.append(ProbeConfig("ddp", w, share, gpus=1))
    return out


def gpu_workers(client: Any) -> list[str]:
    """Addresses of the workers that advertise a GPU (Dask resource ``GPU`` >= 1)."""
    workers = client.scheduler_info()["workers"]
    return sorted(a for a, w in workers.items()
                  if (w.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1)


def probe(
    net: Any, X: Any, y: Any = None, *, session: Any = None,
    configs: Sequence[ProbeConfig] | None = None, workers: Sequence[int] | None = None,
    threads: Sequence[int] | None = None, strategies: Sequence[str] = ("ddp", "fsdp"),
    steps: int = 20, epochs: int = 4, seed: int = 0, timeout: float = 600.0,
    cores: int | None = None, gpus: int = 0, gpu_threads: int | None = None,
    on_result: Any = None,
) -> list[Measurement]:
    """Run short probe fits and return what they measured.

    Parameters
    ----------
    net : skorch.NeuralNet
        The net to plan for (it is copied, never trained).
    X, y :
        Training data; each probe uses ``steps x batch_size`` samples of it.
    session : ClusterSession, optional
        A running cluster to probe on (for its own threads per worker, or its GPU
        workers).
    configs : sequence of ProbeConfig, optional
        Exactly what to probe; by default :func:`default_configs` from ``workers``,
        ``threads``, ``strategies``, ``cores`` (default: this machine's), ``gpus`` and
        ``gpu_threads``.
    steps, epochs :
        Global batches per probe epoch, and epochs per probe (at least 2). The first
        epoch pays one-off costs (counted in the per-fit overhead); the mean of the
        others is the steady rate.
    timeout : float
        Seconds one probe fit may take.
    on_result : callable(Measurement), optional
        Called after each probe (progress in a notebook).
    """
    from scalekit.training.preflight import batch_size

    if epochs < 2:
        raise PlanError(f"probe epochs: got {epochs}, expected 2 or more (the first pays "
                        "one-off costs; the others are the steady rate)")
    cores = cores or os.cpu_count() or 1
    configs = list(configs or default_configs(cores=cores, workers=workers, threads=threads,
                                              strategies=strategies, gpus=gpus,
                                              gpu_threads=gpu_threads))
    if not configs:
        raise PlanError("nothing to probe: no configuration fits the given workers, "
                        f"threads and {cores} cores")
    batch = batch_size(net)
    n = _len(X)
    size = min(n, max(steps, 1) * batch)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    Xs, ys = take(X, idx), (take(y, idx) if y is not None else None)
    # the reference: one worker, the fewest threads; probed again on a few batches (its
    # epochs are then mostly that part), for twice the epochs (cheap, and less noisy),
    # the two give the part of an epoch that does not grow with its samples
    cpu_one = [c for c in configs if c.workers == 1 and not c.gpus]
    reference = min(cpu_one, key=lambda c: c.threads) if cpu_one else None
    groups: dict[tuple[int, int], list[ProbeConfig]] = {}
    for c in configs:
        groups.setdefault((c.threads, c.gpus), []).append(c)
    order = sorted(groups, key=lambda k: (reference is None or k != (reference.threads, 0), k))
    per_epoch = 0.0
    results: list[Measurement] = []
    # the notebook's one-off costs (its first optimizer imports torch._dynamo, ~1 s) are
    # no part of a fit's overhead once it has planned: pay them before the first probe
    probe_net(net, epochs=epochs).initialize()
    with tempfile.TemporaryDirectory(prefix="scalekit-probe-") as folder:
        def one(c: ProbeConfig, Xp: Any, yp: Any, session: Any, rate: float,
                times: int = 1) -> Observed:
            return _probe_one(session, net, Xp, yp, c, epochs=epochs * times, seed=seed,
                              timeout=timeout, folder=folder, send_rate=rate)

        small = np.arange(min(size, max(2, size // batch // 8) * batch))
        Xsmall, ysmall = take(Xs, small), (take(ys, small) if ys is not None else None)
        for key in order:
            # sharded probes first: a process keeps some memory it freed, and ddp's
            # larger peak then hides the sharded probe's smaller one less
            group = sorted(groups[key], key=lambda c: (c.strategy not in SHARDED, c.workers))
            need = max(c.workers for c in group)
            with _cluster_for(session, need, *key) as cluster:
                warm(cluster, gpus=key[1])
                rate = send_rate(cluster.client, X, y)
                warm_up_fit(cluster, net, Xs, ys, strategy=_strategy_of(group[0]),
                            workers=need, gpus=key[1], timeout=timeout)
                seen = [(c, one(c, Xs, ys, cluster, rate)) for c in group]
                full = next((o for c, o in seen if c == reference), None)
                if full is not None and reference is not None and 2 * len(small) <= size:
                    try:
                        per_epoch = epoch_constant(full, one(reference, Xsmall, ysmall,
                                                             cluster, rate, times=2))
                    except Exception:  # e.g. a stratified split of too few samples
                        logger.info("probe on %d samples failed; an epoch's constant part "
                                    "stays in the per-sample time", len(small),
                                    exc_info=True)
            for c, observed in seen:
                m = observed.measurement(per_epoch)
                logger.info("probe %s: %s", c, m)
                results.append(m)
                if on_result is not None:
                    on_result(m)
    return results


@contextlib.contextmanager
def _cluster_for(session: Any, workers: int, threads: int, gpus: int = 0) -> Iterator[Any]:
    if session is not None and _fits(session, workers, threads, gpus):
        yield session
        return
    from scalekit.session import cluster

    options: dict[str, Any] = {"gpus": workers} if gpus else {}
    temporary = cluster(workers=workers, threads_per_worker=threads, **options)
    try:
        temporary.wait_for_workers(workers, timeout=300)
        yield temporary
    finally:
        temporary.close()


def _fits(session: Any, workers: int, threads: int, gpus: int) -> bool:
    """Whether the session's first ``workers`` workers are what the probe needs:
    ``sk.fit(max_workers=W)`` trains on the first W, so all must be alike."""
    nthreads = session.client.nthreads()
    if len(nthreads) < workers or _threads_of(session) != threads:
        return False
    with_gpu = len(gpu_workers(session.client))
    return with_gpu == len(nthreads) if gpus else with_gpu == 0


def _threads_of(session: Any) -> int | None:
    counts = set(session.client.nthreads().values())
    return counts.pop() if len(counts) == 1 else None


def warm(session: Any, *, gpus: int = 0) -> None:
    """Pay the workers' one-off costs before a timed fit: imports (torch, skorch, the
    training runtime), the first optimizer step and, on GPU workers, creating the CUDA
    context."""
    from scalekit.training.rounds import warm_worker

    session.client.run(warm_worker)
    session.client.run(_import_runtime)
    if gpus:
        session.client.run(_warm_cuda, workers=gpu_workers(session.client))


def _import_runtime() -> None:
    import torch.distributed.checkpoint  # noqa: F401  (sharded checkpoints)

    import scalekit.training.checkpoint  # noqa: F401
    import scalekit.training.host_reduce  # noqa: F401
    import scalekit.training.rank  # noqa: F401


def warm_up_fit(session: Any, net: Any, X: Any, y: Any = None, *, strategy: Any = "ddp",
                workers: int = 1, gpus: int = 0, timeout: float = 600.0) -> None:
    """A throw-away one-epoch fit of a copy of ``net`` on two batches of ``X`` over
    ``workers`` workers: a cluster's first fit pays for its first rendezvous, process
    group, strategy set-up and checkpoint write, which the fits after it do not."""
    from scalekit.fitting import fit
    from scalekit.training.preflight import batch_size

    rows = np.arange(min(_len(X), 2 * batch_size(net)))
    copy = probe_net(net, epochs=1, gpus=gpus)
    with tempfile.TemporaryDirectory(prefix="scalekit-warm-") as folder:
        try:
            run = fit(copy, take(X, rows), take(y, rows) if y is not None else None,
                      cluster=session, show=False, wait=False, max_workers=workers,
                      strategy=strategy, checkpoint=os.path.join(folder, "run"))
            run.wait(timeout)
        except Exception:  # best effort (e.g. a stratified split of two batches): the
            # timed fit then pays these costs itself, and reports its own errors
            logger.info("warm-up fit failed", exc_info=True)


def _warm_cuda() -> None:
    import torch

    torch.zeros(1, device="cuda").add_(1).cpu()


def send_rate(client: Any, X: Any, y: Any = None, *, block: int = SEND_BLOCK,
              repeats: int = 3) -> float:
    """Bytes per second at which data reaches the workers (bytes x workers / seconds),
    timed as the fit sends its data (scattered to every worker); 0 when the data's size
    is unknown."""
    per_row = (data_bytes(X) + data_bytes(y)) / max(_len(X), 1)
    if per_row <= 0:
        return 0.0
    rows = np.arange(min(_len(X), max(1, int(block // per_row))))
    part = [take(X, rows), take(y, rows) if y is not None else None]
    nbytes = sum(data_bytes(p) for p in part)
    n_workers = max(1, len(client.nthreads()))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        futures = client.scatter(part, broadcast=True, hash=False)
        times.append(time.perf_counter() - started)
        client.cancel(futures)
    return nbytes * n_workers / max(statistics.median(times), 1e-9)


def _probe_one(session: Any, net: Any, X: Any, y: Any, c: ProbeConfig, *, epochs: int,
               seed: int, timeout: float, folder: str, send_rate: float = 0.0) -> Observed:
    from scalekit.events import EpochEnded
    from scalekit.fitting import fit

    copy = probe_net(net, epochs=epochs, gpus=c.gpus)
    strategy = _strategy_of(c)
    started = time.time()  # EpochEnded events carry time.time()
    run = fit(copy, X, y, cluster=session, show=False, wait=False, seed=seed,
              max_workers=c.workers, strategy=strategy,
              checkpoint=os.path.join(folder, f"{time.time_ns()}"))
    try:
        run.wait(timeout)
    except TimeoutError as exc:
        raise PlanError(f"probe {c} took longer than {timeout:g}s; probe fewer steps "
                        "(steps=...) or give it more time (timeout=...)") from exc
    wall = time.time() - started
    report = run.report
    if report is None or report.world_size != c.workers:
        raise PlanError(f"probe {c} ran on {getattr(report, 'world_size', 0)} workers; "
                        f"the cluster had {len(session.client.nthreads())}")
    ends: dict[int, float] = {}
    for e in run.events:
        if isinstance(e, EpochEnded):
            ends.setdefault(e.epoch, e.time)
    durs = tuple(float(row["dur"]) for row in copy.history if row.get("dur"))
    if not durs:
        raise PlanError(f"probe {c} recorded no epoch durations")
    # the probe's own data went to every worker of the cluster: not a fixed cost
    sent = (data_bytes(X) + data_bytes(y)) * len(session.client.nthreads())
    return Observed(config=c, report=report, n_samples=_len(X), durs=durs,
                    ends=tuple(ends[k] for k in sorted(ends)), wall=wall,
                    transfer=sent / send_rate if send_rate else 0.0, send_rate=send_rate)


def _strategy_of(c: ProbeConfig) -> Any:
    if c.shard_size is None:
        return c.strategy
    from scalekit.training.strategies import Hybrid

    return Hybrid(shard_size=c.shard_size)


def probe_net(net: Any, *, epochs: int, gpus: int = 0) -> Any:
    """An untrained copy of ``net`` for a probe: same module, optimizer, batch and
    validation split (the real fit validates too); no user callbacks, quiet; on a GPU
    (``device="cuda"``) for a GPU probe, else on the CPU."""
    from sklearn.base import clone

    copy = clone(net)
    copy.set_params(max_epochs=epochs, verbose=0, callbacks=None, warm_start=False,
                    device="cuda" if gpus else "cpu")
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
