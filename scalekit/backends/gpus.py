"""GPU workers on one machine: which GPUs a local cluster pins its workers to.

As dask-cuda's ``LocalCUDACluster`` does, each GPU worker is started with
``CUDA_VISIBLE_DEVICES`` listing *its* GPU first and the others after it (so its GPU is
``cuda:0`` in the worker, and NCCL still sees its peers for peer-to-peer copies), is
named after its GPU, and advertises the Dask resource ``GPU=1``.

:func:`resolve_gpus` and :func:`worker_env` are pure; :func:`visible_gpus` asks the
machine (NVML when ``nvidia-ml-py`` is installed, else torch), without creating a CUDA
context in the notebook's process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from scalekit.errors import ConfigError

FIELD = "scalekit.cluster.gpus"
RESOURCE = "GPU"  # the Dask resource each GPU worker advertises


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    The kernel's own ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) is respected, as CUDA
    does: only the GPUs it lists exist for this process and its workers.
    """
    count = _device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    visible = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
            break
        visible.append(entry)
    return visible[:count]  # entries naming GPUs that are not there do not count


def _device_count() -> int:
    try:
        import pynvml  # nvidia-ml-py: counts without a CUDA context

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, or no driver
        pass
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a torch without CUDA support, or a broken driver
        return 0


def resolve_gpus(requested: Any, visible: Sequence[str]) -> tuple[str, ...]:
    """The GPUs to start workers on, one worker each.

    Parameters
    ----------
    requested : "auto", int or sequence of GPU ids
        ``"auto"``: every visible GPU (none on a machine without one); ``N``: the first
        ``N``; a list: exactly those (indices or ``GPU-...`` UUIDs).
    visible : sequence of str
        What :func:`visible_gpus` found.

    Raises
    ------
    ConfigError
        When more GPUs, or other GPUs, are asked for than the machine has.
    """
    have = _describe(visible)
    if requested == "auto":
        return tuple(visible)
    if isinstance(requested, int):
        if requested > len(visible):
            raise ConfigError(
                FIELD, requested, f"at most {len(visible)} ({have})",
                "Ask for fewer GPUs, or gpus='auto' for every GPU this machine has.")
        return tuple(visible[:requested])
    wanted = [str(g) for g in requested]
    missing = [g for g in wanted if g not in visible]
    if missing:
        raise ConfigError(
            FIELD, list(requested), f"GPUs among {list(visible)} ({have})",
            f"There is no GPU {', '.join(missing)} here; use gpus='auto' for every GPU.")
    return tuple(wanted)


def _describe(visible: Sequence[str]) -> str:
    if not visible:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        return ("this machine has no GPU visible to this process"
                + (f"; CUDA_VISIBLE_DEVICES={hidden!r}" if hidden is not None else ""))
    return f"this machine has {len(visible)} GPU{'s' if len(visible) != 1 else ''}: " \
        + ", ".join(visible)


def worker_env(gpu: str, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of the worker pinned to ``gpu``: its GPU first, then the rest."""
    i = list(gpus).index(gpu)
    rotated = [*gpus[i:], *gpus[:i]]
    return {"CUDA_VISIBLE_DEVICES": ",".join(rotated)}


def gpu_threads(threads: int, n_gpus: int, cores: int | None = None) -> int:
    """Threads per GPU worker: the configured count, or a fair share of the cores
    when that is more (the rank's CPU side: batch reads, the optimizer's bookkeeping)."""
    cores = cores or os.cpu_count() or 1
    return max(threads, cores // max(1, n_gpus))


def gpu_cluster_config(config: Any, visible: Sequence[str], *, workers: int | None = None,
                       threads: int | None = None, max_workers: int | None = None
                       ) -> tuple[Any, str]:
    """``config`` (a ClusterConfig asking for GPUs) with the GPUs resolved.

    Returns the config to start (``gpus`` a tuple of ids, ``workers`` and
    ``max_workers`` at most one per GPU, a fair thread share) and a notice for the
    user ("" when there is nothing to say). The explicitly passed ``workers``,
    ``threads`` and ``max_workers`` win over the defaults, within the GPUs.
    """
    ids = resolve_gpus(config.gpus, visible)
    if not ids:  # gpus="auto" on a machine without one: CPU workers, said out loud
        return config.replace(gpus=None), (
            f"gpus='auto': {_describe(visible)}; starting {config.workers} CPU "
            f"worker{'s' if config.workers != 1 else ''}")
    n = len(ids)
    if workers is not None and workers > n:
        raise ConfigError(
            "scalekit.cluster.workers", workers, f"at most {n} with gpus={config.gpus!r}",
            f"Each GPU worker has a GPU of its own and there {'are' if n != 1 else 'is'} "
            f"{n}; drop gpus= for CPU workers.")
    cap = min(max_workers or n, n)
    return config.replace(
        gpus=ids, workers=min(workers or n, cap), max_workers=cap,
        threads_per_worker=threads or gpu_threads(config.threads_per_worker, n),
    ), ""
