"""The strategy contract, the registry of strategies by name, and their shared helpers.

A strategy is a small frozen dataclass (its options; shipped to every rank) that
carries its behaviour, as a skorch callback does: the rank loop calls the hooks below
and never asks which strategy it holds. Adding one means one module with a
:class:`Strategy` subclass and one :func:`register` line (see ``__init__.py``).

==============================  ========================================================
hook                            when (on each rank)
==============================  ========================================================
``restore(net, state)``         a round starts from a state: before ``prepare``
``prepare(net, setup)``         once per round -> :class:`Prepared`
``load(prepared, state, ...)``  after ``prepare``: what ``restore`` could not load
``loss_weight(piece, ...)``     each training step: the factor on the rank's mean loss
``after_step(prepared)``        after each optimizer step
``before_eval(prepared)``       before each validation
``end_epoch(prepared)``         at each epoch end, before anything is reported or saved
``writes_checkpoints(rank)``    whether this rank saves; ``save(...)`` then writes
``state_dict(prepared, ...)``   the full state for the notebook (rank 0 gets it)
``state_shards(world_size)``    over how many ranks one copy of the state is spread
``describe(world_size)``        one line for logs
==============================  ========================================================

The checkpoint hooks come from :class:`~.checkpointing.PlainCheckpoints` (the default)
or :class:`~.checkpointing.ShardedCheckpoints`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from scalekit.errors import UsageError
from scalekit.training.strategies.checkpointing import PlainCheckpoints


@dataclasses.dataclass(frozen=True)
class RankSetup:
    """Where one rank of a round prepares its model."""

    world_size: int
    device_ids: list[int] | None = None  # the rank's CUDA index (None: a CPU net)
    host_reduce: bool = False  # average through shared memory where every rank can
    timeout: float = 60.0  # bounds a wait for a peer during set-up
    precision: str = "32"  # "32" | "bf16" | "fp16"

    @property
    def device(self) -> str:
        return "cuda" if self.device_ids else "cpu"


class Strategy(PlainCheckpoints):
    """Base class of the strategies: subclass it as a ``frozen`` dataclass.

    Subclasses set ``name`` and implement :meth:`prepare`; every other hook has a
    default that suits a strategy averaging gradients over the whole world.
    """

    name: ClassVar[str] = ""

    def prepare(self, net: Any, setup: RankSetup) -> Prepared:
        """Apply the strategy to the initialized skorch ``net`` on this rank."""
        raise NotImplementedError(f"{type(self).__name__} must implement prepare()")

    def loss_weight(self, piece: int, batch: int, world_size: int) -> float:
        """The factor on this rank's mean loss over its ``piece`` of a global ``batch``.

        Averaging strategies divide the summed gradient by the world size; weighting
        each rank's mean loss by its share x world makes that the global-batch mean.
        """
        return piece * world_size / batch

    def after_step(self, prepared: Prepared) -> None:
        """After each optimizer step (``prepared.step`` counts them)."""

    def before_eval(self, prepared: Prepared) -> None:
        """Before each validation pass."""

    def end_epoch(self, prepared: Prepared) -> None:
        """At each epoch end, before the row is reported and a checkpoint saved."""

    def state_shards(self, world_size: int) -> int:
        """Over how many ranks one copy of the state is sharded (1: replicated)."""
        return 1

    def describe(self, world_size: int | None = None) -> str:
        """``name(option=value, ...)``, plus the world when given."""
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        options = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        text = f"{self.name}({options})"
        return text if world_size is None else f"{text} on {world_size} rank(s)"


@dataclasses.dataclass
class Prepared:
    """A strategy applied on one rank for one round: the modules the loop uses and the
    round's running counts. The loop calls its hooks; they ask the strategy."""

    strategy: Strategy
    train_module: Any  # what forward() goes through while training
    eval_module: Any  # ... and otherwise
    model: Any  # the module whose state dict is the model's (for state dict helpers)
    net: Any = None  # the rank's skorch net
    reducer: Any = None  # a HostReducer when the ranks average through shared memory
    step: int = 0  # optimizer steps taken this round
    synced_at: int = 0  # averaging strategies: the step at which the ranks last averaged

    def loss_weight(self, piece: int, batch: int, world_size: int) -> float:
        return self.strategy.loss_weight(piece, batch, world_size)

    def after_step(self) -> None:
        self.step += 1
        self.strategy.after_step(self)

    def before_eval(self) -> None:
        self.strategy.before_eval(self)

    def end_epoch(self) -> None:
        self.strategy.end_epoch(self)

    @property
    def transport(self) -> str:
        """How gradients (or parameters) are averaged: "shared memory" or the
        process group's backend."""
        if self.reducer is not None:
            return "shared memory"
        import torch.distributed as dist

        return dist.get_backend() if dist.is_initialized() else "none"

    def close(self) -> None:
        """Release what the round held (the shared-memory reducer)."""
        if self.reducer is not None:
            self.reducer.close()
            self.reducer = None

    def local_state_bytes(self, optimizer: Any) -> int:
        """Bytes of parameters, gradients and optimizer state held by this rank."""
        total = 0
        for p in self.model.parameters():
            total += _local_bytes(p)
            if p.grad is not None:
                total += _local_bytes(p.grad)
        for state in optimizer.state.values():
            for value in state.values():
                if hasattr(value, "element_size"):
                    total += _local_bytes(value)
        return total


def _local_bytes(t: Any) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return int(local.numel() * local.element_size())


# -- the registry ------------------------------------------------------------------------

_REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Make ``cls`` a strategy ``resolve`` knows by its ``name``; returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"a strategy subclasses Strategy, got {cls!r}")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass (it is shipped to ranks)")
    if not cls.name or not cls.name.isidentifier():
        raise TypeError(f"{cls.__name__}.name must be an identifier, got {cls.name!r}")
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"a strategy named {cls.name!r} exists already ({known.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget the strategy called ``name`` (a test's own strategies)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered strategies' names, in the order they were registered."""
    return tuple(_REGISTRY)


def resolve(strategy: str | Strategy, **options: Any) -> Strategy:
    """A strategy object from a registered name (with options) or an object (whose
    options are replaced by ``options``)."""
    if isinstance(strategy, Strategy):
        if not options:
            return strategy
        return _build(type(strategy), strategy.name, lambda: dataclasses.replace(
            strategy, **options))  # type: ignore[type-var]
    cls = _REGISTRY.get(strategy) if isinstance(strategy, str) else None
    if cls is None:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(_REGISTRY)}")
    return _build(cls, strategy, lambda: cls(**options))


def _build(cls: type[Strategy], name: str, make: Any) -> Strategy:
    try:
        return make()
    except TypeError as exc:
        known = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
        fields = [f.name for f in known]
        raise UsageError(f"{name} takes the options {fields or 'none'}: {exc}") from exc


# -- helpers of the strategies that average ----------------------------------------------


def average_parameters(module: Any, reducer: Any = None) -> None:
    """All-reduce-average every parameter (one flat buffer, one collective; through
    ``reducer``, a :class:`~scalekit.training.host_reduce.HostReducer`, if given)."""
    import torch
    import torch.distributed as dist

    params = [p for p in module.parameters()]
    if not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        if reducer is not None:
            reducer.mean_(flat)
        else:
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def sync_parameters(prepared: Prepared) -> None:
    """Average the ranks' parameters now (a collective) and remember the step."""
    average_parameters(prepared.model, prepared.reducer)
    prepared.synced_at = prepared.step


def sync_if_drifted(prepared: Prepared) -> None:
    """Average unless nothing stepped since the last average (every rank agrees: they
    count the same steps)."""
    if prepared.synced_at != prepared.step:
        sync_parameters(prepared)


def host_reducer(module: Any, setup: RankSetup) -> Any:
    """A shared-memory reducer if every rank can use one (the same answer everywhere)."""
    if setup.world_size < 2 or not setup.host_reduce:
        return None
    from scalekit.training.host_reduce import open_host_reducer

    # every rank takes the same path: "host_reduce" comes from the round's config, and
    # every rank has the round's device (GPU modules average with nccl)
    params = [p for p in module.parameters() if p.requires_grad]
    if any(p.device.type != "cpu" for p in params):
        return None
    return open_host_reducer(sum(p.numel() * p.element_size() for p in params),
                             timeout=setup.timeout)
