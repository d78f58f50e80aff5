"""What a training worker's environment is, on every backend.

The local backend (its :class:`~scalekit.backends.local.TrainingNanny`) and the
Kubernetes worker pods (their container env, and the nanny preload
:func:`prepare_nanny`) both take it from here:

- the thread variables (``OMP_NUM_THREADS``, ...) equal the worker's thread count: the
  stock nanny sets them to 1, which leaves torch one intra-op thread;
- no ``MALLOC_TRIM_THRESHOLD_``: the stock nanny's 65536 was measured to slow torch by
  25-30 %;
- calmer Dask timers and no sampling profiler (:func:`worker_settings`);
- a local GPU worker's ``CUDA_VISIBLE_DEVICES``, its own GPU first
  (:func:`scalekit.backends.gpus.worker_env`). A pod gets its GPU from the device plugin.

Nothing here imports ``distributed``: worker pods import this into their nanny.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from scalekit.backends.gpus import worker_env as gpu_env

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
MONITOR_MS = 500  # memory checks of a worker (Dask's default: every 100 ms)

# The event-loop health check wakes every 20 ms and the system monitor every 0.5 s by
# default, in the scheduler, each nanny and each worker: a few % of a core that the
# ranks lose, and a rank that loses it makes the others wait at the next all-reduce.
# (Locally the scheduler and the nannies run in the kernel, which takes these too.)
KERNEL_SIDE = {"distributed.admin.tick.interval": "200ms",
               "distributed.admin.system-monitor.interval": "1s"}


def worker_settings(profile: bool) -> dict[str, Any]:
    """Dask settings of a training worker, dotted (``distributed.admin.tick.interval``).

    Without the sampling profiler and with a calmer memory monitor, a rank's step is
    measured 5-10 % faster on a 2-core machine (bench/bench_training.py).

    Parameters
    ----------
    profile : bool
        Keep Dask's statistical profiler on (``ClusterConfig.profile``).
    """
    dotted: dict[str, Any] = {
        **KERNEL_SIDE, "distributed.worker.memory.monitor-interval": f"{MONITOR_MS}ms"}
    if not profile:
        dotted["distributed.worker.profile.enabled"] = False
    return dotted


def worker_dask_config(profile: bool) -> dict[str, Any]:
    """:func:`worker_settings` in the nested form a ``Nanny(config=...)`` takes."""
    config: dict[str, Any] = {}
    for key, value in worker_settings(profile).items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def worker_dask_env(profile: bool) -> dict[str, str]:
    """:func:`worker_settings` as ``DASK_...`` variables (a pod's container env), which
    Dask reads into its config as the worker starts."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
            for key, value in worker_settings(profile).items()}


def thread_env(threads: int) -> dict[str, str]:
    """The thread variables for a worker with ``threads`` threads."""
    return dict.fromkeys(THREAD_VARS, str(threads))


def process_env(env: Mapping[str, str], threads: int, *, gpu: str | None = None,
                gpus: Sequence[str] = (), given: Mapping[str, str] | None = None
                ) -> dict[str, str]:
    """The environment of a worker process, from what a stock nanny would give it.

    Parameters
    ----------
    env : mapping
        The nanny's ``env`` for its worker process.
    threads : int
        The worker's thread count.
    gpu, gpus : str and sequence of str, optional
        A local GPU worker's GPU and all of the cluster's GPUs.
    given : mapping, optional
        Variables set for the worker from outside (a pod's container env): a thread
        variable set there is kept.
    """
    out = {k: v for k, v in env.items() if k != MALLOC_TRIM}
    out.update(thread_env(threads))
    for var in THREAD_VARS:
        if given and var in given:
            out[var] = given[var]
    if gpu is not None:
        out.update(gpu_env(gpu, gpus))
    return out


def prepare_nanny(nanny: Any) -> None:
    """Give a worker pod's nanny the training environment for its worker process.

    Runs in the pod (``dask_setup`` of the nanny preload): its own process may be
    changed, unlike a local nanny's, which is the notebook kernel.
    """
    threads = int(getattr(nanny, "nthreads", 1) or 1)
    env = process_env(nanny.env, threads, given=os.environ)
    nanny.env.clear()
    nanny.env.update(env)
    nanny.pre_spawn_env.pop(MALLOC_TRIM, None)
