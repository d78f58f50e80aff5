"""``fsdp``: FSDP2's ``fully_shard``. Parameters, gradients and optimizer state are
sharded across the ranks and gathered unit by unit for compute. Exact like ``ddp``,
with a fraction of the memory per rank. The sharding helpers here serve ``hybrid`` too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scalekit.errors import UsageError
from scalekit.training.strategies.base import Prepared, RankSetup, Strategy
from scalekit.training.strategies.checkpointing import ShardedCheckpoints

Wrap = str | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FSDP(ShardedCheckpoints, Strategy):
    """Shard with FSDP2's ``fully_shard``.

    ``wrap`` says which submodules become their own shard unit (gathered one at a
    time): ``"children"`` (each direct child with parameters), or a tuple of module
    class names such as ``("Linear",)`` or ``("TransformerBlock",)``. The root is
    always wrapped last.
    """

    wrap: Wrap = "children"
    name = "fsdp"

    def __post_init__(self) -> None:
        check_wrap(self.wrap)

    def prepare(self, net: Any, setup: RankSetup) -> Prepared:
        from torch.distributed.device_mesh import init_device_mesh

        before_sharding()
        return shard(self, net, init_device_mesh(setup.device, (setup.world_size,)),
                     self.wrap, setup)

    def state_shards(self, world_size: int) -> int:
        return world_size


def check_wrap(wrap: Any) -> None:
    ok = isinstance(wrap, str) and wrap or (
        isinstance(wrap, tuple) and wrap and all(isinstance(w, str) and w for w in wrap))
    if not ok:
        raise UsageError(
            f"wrap must be 'children', a module class name or a non-empty tuple of "
            f"class names such as ('Linear',), got {wrap!r}"
        )


def before_sharding() -> None:
    """What every round does before it shards (see the two functions)."""
    keep_large_buffers_out_of_the_heap()
    forget_meshes_of_earlier_rounds()


def shard(strategy: Strategy, net: Any, mesh: Any, wrap: Wrap, setup: RankSetup) -> Prepared:
    """``fully_shard`` the units that ``wrap`` names, then the root, on ``mesh`` (always
    an explicit mesh on the net's device type: FSDP's default mesh follows
    ``torch.cuda.is_available()``, which would put a CPU net on a GPU machine on cuda).

    The net's optimizer is rebuilt over the sharded parameters: load optimizer state
    after this. With a mixed ``precision`` ("bf16", "fp16") the units gather parameters
    and compute in it and reduce gradients in float32 (FSDP2's
    ``MixedPrecisionPolicy``; the sharded parameters stay float32).
    """
    from torch.distributed.fsdp import fully_shard

    module = net.module_
    kwargs: dict[str, Any] = {"mesh": mesh}
    policy = mixed_precision(setup.precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    for sub in shard_units(module, wrap):
        fully_shard(sub, **kwargs)
    fully_shard(module, **kwargs)
    net.initialize_optimizer()  # over the sharded parameters
    return Prepared(strategy, module, module, module, net=net)


def mixed_precision(precision: str) -> Any:
    if precision == "32":
        return None
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def forget_meshes_of_earlier_rounds() -> None:
    """Clear DTensor's sharding-propagation caches before sharding a new round.

    The caches key on ``DeviceMesh``, whose equality ignores this process's rank. A
    worker that was rank 1 of a 2-rank round and is rank 0 of a later one would get
    DTensors on the old round's mesh back from them: training still runs on FSDP's own
    (correct) mesh, but a checkpoint then places this rank's shard at the other rank's
    offset and DCP refuses the save ("Failed to validate global plan: invalid fill"),
    or, with the ranks swapped, writes each shard under the other's offset.
    """
    try:
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    except ImportError:  # a torch without these caches, or another name for them
        return
    _clear_sharding_prop_cache()


def keep_large_buffers_out_of_the_heap(threshold: int = 1 << 20) -> None:
    """glibc: serve allocations of ``threshold`` bytes and more with ``mmap``, so their
    memory goes back to the system when freed.

    FSDP gathers each unit's full parameters and gradients and frees them again, every
    step. glibc's default mmap threshold is *dynamic*: after the first such buffer is
    freed it rises to its size, later buffers come from the heap, and the freed heap
    fragments and stays resident. Measured here (a 12.7M-parameter MLP, 2 ranks, gloo):
    an fsdp rank's peak RSS grew to 800-880 MiB, above ddp's 510 MiB, instead of the
    440 MiB it reaches with a fixed threshold. A no-op where there is no ``mallopt``.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass


def shard_units(module: Any, wrap: Wrap) -> list[Any]:
    """The submodules that become shard units, in module order (the root excluded)."""
    if wrap == "children":
        return list(_child_units(module))
    names = {wrap} if isinstance(wrap, str) else set(wrap)
    units = [m for m in module.modules() if m is not module and type(m).__name__ in names]
    if not units:
        raise UsageError(f"FSDP wrap={wrap!r} matches no submodule of {type(module).__name__}")
    return units


def _child_units(module: Any) -> Any:
    """Children with parameters, looking through plain containers: a model whose only
    child is an ``nn.Sequential`` gets one shard unit per layer, not one for all."""
    from torch import nn

    for child in module.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            yield from _child_units(child)
        elif any(True for _ in child.parameters()):
            yield child
