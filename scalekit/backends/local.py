"""The local backend: ``distributed.LocalCluster`` bound to 127.0.0.1."""

from __future__ import annotations

import copy
import logging
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import dask.config
from distributed import Nanny

from scalekit.backends.base import DaskClusterBackend, TrainingHooks
from scalekit.backends.gpus import RESOURCE
from scalekit.backends.worker_environment import (
    KERNEL_SIDE,
    MONITOR_MS,
    process_env,
    worker_dask_config,
)
from scalekit.config import ClusterConfig
from scalekit.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from distributed import LocalCluster

logger = logging.getLogger(__name__)


class TrainingNanny(Nanny):
    """A nanny whose worker gets the training environment (see
    :mod:`scalekit.backends.worker_environment`) and that leaves the kernel's alone.

    The stock nanny writes its "pre-spawn" variables, ``OMP_NUM_THREADS=1`` among them,
    into its *own* process, which for a LocalCluster is the notebook kernel; this one
    keeps only ``PYTHONHASHSEED`` there. It preloads :mod:`scalekit.backends.worker_setup`
    so that interrupting the kernel does not kill the workers.

    Parameters
    ----------
    gpu, gpus : str and sequence of str, optional
        The GPU this worker is pinned to, and all of the cluster's GPUs.
    *args, **kwargs
        For ``distributed.Nanny``.
    """

    def __init__(self, *args: Any, gpu: str | None = None, gpus: Sequence[str] = (),
                 **kwargs: Any) -> None:
        preload = kwargs.get("preload") or list(dask.config.get("distributed.worker.preload"))
        kwargs["preload"] = [*preload, "scalekit.backends.worker_setup"]
        super().__init__(*args, **kwargs)
        # the nanny lives in the kernel: its 10 Hz memory poll of the worker is kernel CPU
        # taken from the ranks (2 ranks on 2 cores wait for each other at every step)
        monitor = self.periodic_callbacks.get("memory_monitor")
        if monitor is not None:
            monitor.callback_time = max(monitor.callback_time, MONITOR_MS)
        self.env = process_env(self.env, self.nthreads, gpu=gpu, gpus=gpus)
        self.pre_spawn_env = {"PYTHONHASHSEED": self.pre_spawn_env.get("PYTHONHASHSEED", "6640")}


class LocalBackend(DaskClusterBackend):
    """Workers as local processes (or threads), everything on 127.0.0.1.

    With ``processes=False`` the workers are threads of this process, as for
    ``memory://`` checkpoints; torch.distributed allows one process group per process,
    so only one of them can train at a time (see docs/elastic.md).

    Parameters
    ----------
    config : ClusterConfig
        Workers, threads, memory, GPUs, bounds.
    hooks : TrainingHooks, optional
        The running fits, for training-aware adaptive scaling (default: none).
    """

    name = "local"

    def __init__(self, config: ClusterConfig, *, hooks: TrainingHooks | None = None) -> None:
        if config.gpus and not config.processes:
            raise ConfigError(
                "scalekit.cluster.processes", config.processes, "true with gpus",
                "A GPU worker is a process pinned to its GPU with CUDA_VISIBLE_DEVICES; "
                "threads of this process share its devices. Drop processes=False.")
        super().__init__(config, hooks=hooks)

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
            # a GPU cluster's workers are TrainingNannies (GPUs need processes=True)
            options["gpu"], options["gpus"] = gpu, self.gpus
            options["resources"] = {**(options.get("resources") or {}), RESOURCE: 1}
            return {gpu: spec}

    return GPULocalCluster
