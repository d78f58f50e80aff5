"""Where a rank computes: the net's device type, the process group's backends, the GPU
each rank uses, and the numeric precision.

Everything here but :func:`worker_devices` and moving a fitted net (:func:`on_cpu`,
:func:`to_user_device`) is pure, so placement and backend choice
are tested as tables without a GPU.

* **Backend per device type.** A CPU net trains over gloo and never touches NCCL. A
  CUDA net gets one process group with a backend per device type,
  ``"cpu:gloo,cuda:nccl"``: its CUDA tensors (gradients, parameters, gathered
  predictions) go over NCCL, the runtime's CPU collectives (loss sums, the shared
  objects of the set-up, checkpoint coordination) over gloo.
* **One GPU per rank.** Each worker reports the GPUs it sees, in its own order (a GPU
  worker started by scalekit sees its own GPU first). On every host, each rank takes
  the first GPU in its list that no other rank there has taken, which gives pinned
  workers their own GPU and unpinned workers on a multi-GPU host distinct ones (like
  torchrun's local rank). A worker left without a GPU of its own is not placed: at the
  start of a fit that is an error naming the GPU and the fix; mid-fit the worker sits
  out (the fit goes on without it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from scalekit.config import normalize_precision  # noqa: F401 (part of this module's API)
from scalekit.errors import ConfigError, UsageError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """One GPU as a worker's process sees it."""

    uuid: str
    name: str = ""
    total_memory: int = 0  # bytes

    def describe(self, index: int | None = None) -> str:
        where = f"cuda:{index} " if index is not None else ""
        return f"{where}{self.name or 'GPU'} ({self.uuid})".strip()


@dataclasses.dataclass(frozen=True)
class WorkerDevices:
    """What one worker can compute on (see :func:`worker_devices`)."""

    worker: str
    host: str  # hostname/boot id: ranks on one host compete for its GPUs
    gpus: tuple[GpuInfo, ...] = ()  # in the worker's order: cuda:0 first
    nccl: bool = False  # torch.distributed can use NCCL there


def worker_devices(cuda: Any = None, dist: Any = None) -> WorkerDevices:
    """This worker's GPUs (run on a worker, e.g. through ``Client.run``).

    ``cuda`` and ``dist`` default to ``torch.cuda`` and ``torch.distributed``; tests pass
    fakes.
    """
    from distributed import get_worker

    from scalekit.training.host_reduce import host_identity
    from scalekit.training.rank import FIRST_IMPORTS

    with FIRST_IMPORTS:  # not while a rank's spec is unpickled (see rank.FIRST_IMPORTS)
        import torch

    cuda = cuda if cuda is not None else torch.cuda
    dist = dist if dist is not None else torch.distributed
    gpus: list[GpuInfo] = []
    if cuda.is_available():
        for i in range(cuda.device_count()):
            props = cuda.get_device_properties(i)
            gpus.append(GpuInfo(uuid=str(getattr(props, "uuid", f"index-{i}")),
                                name=str(props.name), total_memory=int(props.total_memory)))
    try:
        address = get_worker().address
    except ValueError:  # not on a worker (tests)
        address = ""
    return WorkerDevices(worker=address, host=host_identity(), gpus=tuple(gpus),
                         nccl=bool(gpus) and bool(dist.is_nccl_available()))


def device_type(device: Any) -> str:
    """``"cpu"``, ``"cuda"``, ... for a skorch ``device`` setting (``None`` is cpu)."""
    if device is None:
        return "cpu"
    name = getattr(device, "type", None) or str(device)
    return name.split(":", 1)[0]


def process_group_backend(requested: str, dev_type: str) -> str:
    """The ``init_process_group`` backend string for a net on ``dev_type``.

    ``requested`` is ``scalekit.training.backend``: ``auto`` (gloo for CPU nets;
    gloo for CPU tensors and NCCL for CUDA tensors otherwise), ``gloo`` (everything
    over gloo: CUDA tensors too, slower, DDP only) or ``nccl``.
    """
    if dev_type == "cpu":
        if requested == "nccl":
            raise ConfigError(
                "scalekit.training.backend", requested, "auto or gloo for a CPU net",
                "NCCL moves CUDA tensors only; set device='cuda' on the net to train on GPUs.")
        return "gloo"
    if dev_type != "cuda":
        raise UsageError(
            f"device {dev_type!r} cannot train distributed here: scalekit trains on 'cpu' "
            "and 'cuda' devices; set the net's device to one of them")
    return "gloo" if requested == "gloo" else "cpu:gloo,cuda:nccl"


def assign_gpus(inventory: Sequence[WorkerDevices]
                ) -> tuple[dict[str, int], dict[str, str]]:
    """Give each worker a GPU of its own.

    Returns ``(index, left_out)``: the local CUDA index each placed worker's rank uses,
    and, for each worker that cannot be placed, why (naming the GPU and the fix).
    Workers are placed in the order given (the ranks' order).
    """
    taken: dict[tuple[str, str], str] = {}  # (host, uuid) -> worker
    index: dict[str, int] = {}
    left_out: dict[str, str] = {}
    for w in inventory:
        if not w.gpus:
            left_out[w.worker] = (
                f"worker {w.worker} has no GPU (torch.cuda sees none there)")
            continue
        for i, gpu in enumerate(w.gpus):
            if (w.host, gpu.uuid) not in taken:
                taken[(w.host, gpu.uuid)] = w.worker
                index[w.worker] = i
                break
        else:
            first = w.gpus[0]
            left_out[w.worker] = (
                f"worker {w.worker} would share {first.describe()} with worker "
                f"{taken[(w.host, first.uuid)]}: NCCL needs one GPU per rank")
    return index, left_out


def placement_error(left_out: dict[str, str], n_workers: int) -> UsageError:
    """The error a fit raises before it starts when some workers cannot take a rank."""
    reasons = "; ".join(left_out.values())
    no_gpu = any("has no GPU" in r for r in left_out.values())
    fixes = ["start one worker per GPU: sk.cluster(gpus='auto') or %scalekit up --gpus auto"]
    placed = n_workers - len(left_out)
    if placed > 0:
        fixes.append(f"train on the {placed} placeable worker{'s' if placed != 1 else ''} "
                     f"with sk.fit(..., max_workers={placed})")
    if no_gpu:
        fixes.append("or train on CPUs with the net's device='cpu'")
    return UsageError(
        f"this cuda net cannot train on every worker: {reasons}. To fix it, "
        + "; ".join(fixes) + ". Nothing was started; the cluster is unchanged.")


def nccl_error(workers: Iterable[str]) -> UsageError:
    names = ", ".join(sorted(workers))
    return UsageError(
        f"NCCL is not available on worker(s) {names} (torch.distributed."
        "is_nccl_available() is False there), and a cuda net averages its CUDA tensors "
        "with NCCL. Use a CUDA build of torch with NCCL on the workers, or set "
        "scalekit.training.backend: gloo (every collective over gloo: slower, ddp and "
        "local_sgd only). Nothing was started.")


def check_precision(precision: str, dev_type: str) -> None:
    """Refuse precisions the device cannot train in, before anything starts."""
    if precision == "fp16" and dev_type != "cuda":
        raise ConfigError(
            "precision", precision, "'32' or 'bf16' on a CPU net",
            "fp16 training needs a CUDA device (and loss scaling); use precision='bf16' "
            "on CPUs.")


def autocast_dtype(precision: str) -> Any:
    """The ``torch.autocast`` dtype for a precision (``None`` for full precision)."""
    if precision == "32":
        return None
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float16


class on_cpu:  # noqa: N801 - a context manager used like a function
    """Set a skorch net's device to the CPU for a while (initialise, probe): the kernel
    may have no GPU, and should hold no CUDA context."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.device = net.device

    def __enter__(self) -> None:
        self.net.device = "cpu"

    def __exit__(self, *exc: object) -> None:
        self.net.device = self.device


def to_user_device(net: Any) -> None:
    """Put the fitted net where its ``device`` says, as skorch's ``fit`` leaves it.

    A cuda net fitted from a kernel without a GPU (a laptop driving GPU workers) stays
    on the CPU with ``device='cpu'``, as skorch does when it loads a CUDA net there.
    """
    if device_type(net.device) != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        logger.warning("this kernel has no GPU: the fitted net stays on the CPU "
                       "(device='cpu' instead of %r)", net.device)
        net.device = "cpu"
        return
    for name in ("module_", "criterion_"):
        part = getattr(net, name, None)
        if isinstance(part, torch.nn.Module):
            part.to(net.device)
    for name in getattr(net, "_optimizers", ()):
        optimizer = getattr(net, name + "_", None)
        if optimizer is not None:  # loading casts its state to the parameters' device
            optimizer.load_state_dict(optimizer.state_dict())
