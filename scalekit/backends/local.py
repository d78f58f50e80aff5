"""The local backend: ``distributed.LocalCluster`` bound to 127.0.0.1."""

from __future__ import annotations

import copy
import logging
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import dask.config
from distributed import Nanny

from scalekit.backends.base import DaskClusterBackend
from scalekit.backends.gpus import RESOURCE, worker_env
from scalekit.config import ClusterConfig
from scalekit.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from distributed import LocalCluster

logger = logging.getLogger(__name__)

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MONITOR_MS = 500  # memory checks of a worker (Dask's default: every 100 ms)


# The event-loop health check wakes every 20 ms and the system monitor every 0.5 s by
# default, in the scheduler, each nanny and each worker: a few % of a core that the
# ranks lose, and a rank that loses it makes the others wait at the next all-reduce.
KERNEL_SIDE = {"distributed.admin.tick.interval": "200ms",
               "distributed.admin.system-monitor.interval": "1s"}


def worker_dask_config(profile: bool) -> dict[str, Any]:
    """Dask settings for training workers, on top of the kernel's own.

    Without the sampling profiler and with a calmer memory monitor, a rank's step is
    measured 5-10 % faster on a 2-core machine (bench/bench_training.py).
    """
    dotted = {**KERNEL_SIDE, "distributed.worker.memory.monitor-interval": f"{MONITOR_MS}ms"}
    if not profile:
        dotted["distributed.worker.profile.enabled"] = False
    config: dict[str, Any] = {}
    for key, value in dotted.items():  # Nanny wants the nested form
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config


class TrainingNanny(Nanny):
    """A nanny whose worker environment suits torch and leaves the kernel's alone.

    The stock nanny (a) sets ``MALLOC_TRIM_THRESHOLD_=65536``, measured here to slow
    torch by 25-30 %, and (b) writes its "pre-spawn" variables, ``OMP_NUM_THREADS=1``
    among them, into its *own* process, which for a LocalCluster is the notebook kernel.
    This one sets the thread variables to the worker's thread count in the worker only,
    and preloads :mod:`scalekit.backends.worker_setup` so that interrupting the kernel
    does not kill the workers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        preload = kwargs.get("preload") or list(dask.config.get("distributed.worker.preload"))
        kwargs["preload"] = [*preload, "scalekit.backends.worker_setup"]
        super().__init__(*args, **kwargs)
        # the nanny lives in the kernel: its 10 Hz memory poll of the worker is kernel CPU
        # taken from the ranks (2 ranks on 2 cores wait for each other at every step)
        monitor = self.periodic_callbacks.get("memory_monitor")
        if monitor is not None:
            monitor.callback_time = max(monitor.callback_time, MONITOR_MS)
        threads = str(self.nthreads)
        self.env = {k: v for k, v in self.env.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        self.env.update({var: threads for var in _THREAD_VARS})
        self.pre_spawn_env = {"PYTHONHASHSEED": self.pre_spawn_env.get("PYTHONHASHSEED", "6640")}


class LocalBackend(DaskClusterBackend):
    """Workers as local processes (or threads), everything on 127.0.0.1.

    With ``processes=False`` the workers are threads of this process, as for
    ``memory://`` checkpoints; torch.distributed allows one process group per process,
    so only one of them can train at a time (see docs/elastic.md).
    """

    name = "local"

    def __init__(self, config: ClusterConfig) -> None:
        if config.gpus and not config.processes:
            raise ConfigError(
                "scalekit.cluster.processes", config.processes, "true with gpus",
                "A GPU worker is a process pinned to its GPU with CUDA_VISIBLE_DEVICES; "
                "threads of this process share its devices. Drop processes=False.")
        super().__init__(config)

    def _make_cluster(self) -> LocalCluster:
        from distributed import LocalCluster

        cfg = self.config
        dashboard = cfg.dashboard and find_spec("bokeh") is not None
        if cfg.dashboard and not dashboard:
            logger.warning("bokeh is not installed: the Dask dashboard is off")
        # processes=False: worker threads in this process. Dask would connect them over
        # inproc://, which takes no host (LocalCluster refuses one) and whose addresses
        # name no host a rank could rendezvous on; over TCP on 127.0.0.1 they behave as
        # worker processes do, every message serialised, and a one-worker fit works.
        kwargs: dict[str, Any] = {"protocol": "tcp://", "host": "127.0.0.1"}
        if cfg.processes:
            kwargs["worker_class"] = TrainingNanny
            # Nanny merges `config` into the kernel's shallowly: give it the whole tree
            kwargs["config"] = dask.config.merge(dask.config.config,
                                                 worker_dask_config(cfg.profile))
        # the scheduler and the nannies run in the kernel and read these as they start
        with dask.config.set(KERNEL_SIDE):
            if cfg.gpus:
                cluster = _gpu_cluster_class()(
                    gpus=cfg.gpus, n_workers=0, threads_per_worker=cfg.threads_per_worker,
                    memory_limit=cfg.memory_limit, processes=cfg.processes,
                    dashboard_address="127.0.0.1:0" if dashboard else None,
                    **kwargs)
                cluster.scale(cfg.workers)
                return cluster
            return LocalCluster(
                n_workers=cfg.workers,
                threads_per_worker=cfg.threads_per_worker,
                memory_limit=cfg.memory_limit,
                processes=cfg.processes,
                dashboard_address="127.0.0.1:0" if dashboard else None,
                **kwargs,
            )


def _gpu_cluster_class() -> type:
    from distributed import LocalCluster

    class GPULocalCluster(LocalCluster):
        """A LocalCluster with one worker per GPU, named after it (as dask-cuda's
        ``LocalCUDACluster``): scaling up takes the next free GPU, never shares one."""

        def __init__(self, *args: Any, gpus: tuple[str, ...], **kwargs: Any) -> None:
            self.gpus = tuple(gpus)
            super().__init__(*args, **kwargs)

        def new_worker_spec(self) -> dict[str, Any]:
            free = [g for g in self.gpus if g not in self.worker_spec]
            if not free:
                raise ClusterError(
                    f"every GPU ({', '.join(self.gpus)}) already has its worker; "
                    "a GPU cluster scales up to one worker per GPU")
            gpu = free[0]
            spec = copy.deepcopy(self.new_spec)
            options = spec["options"]
            options["env"] = {**(options.get("env") or {}), **worker_env(gpu, self.gpus)}
            options["resources"] = {**(options.get("resources") or {}), RESOURCE: 1}
            return {gpu: spec}

    return GPULocalCluster
