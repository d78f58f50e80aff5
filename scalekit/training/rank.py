"""What runs on a worker: one rank of one round of data-parallel training.

A *round* is a run of epochs on a fixed set of workers. The controller submits
:func:`run_rank` once per worker; the ranks meet through a ``TCPStore`` hosted by rank 0
(its address travels through a Dask ``Variable``, so it works wherever the workers can
reach each other, on a laptop or in a Kubernetes cluster), form a ``torch.distributed``
process group, and train the skorch net with skorch's own loop made data parallel by
:mod:`scalekit.training.dist_net`. Rank 0 returns the trained state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from datetime import timedelta
from typing import Any

import numpy as np

from scalekit.errors import ScalekitError
from scalekit.training.dist_net import RankContext, make_distributed, undo_distributed
from scalekit.training.messages import RankPhase
from scalekit.training.policy import is_peer_failure
from scalekit.training.publisher import Publisher
from scalekit.training.worker_logs import expected_failure

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs besides its data (plain data, cheap to pickle)."""

    run_id: str
    generation: int
    world_size: int
    net: Any  # the user's initialized skorch net
    max_epochs: int  # total epochs of the fit (the round runs what is left)
    state: dict[str, Any] | None = None  # where to start (see scalekit.training.state)
    seed: int = 0
    backend: str = "gloo"  # init_process_group's backend (see devices.process_group_backend)
    devices: tuple[int, ...] | None = None  # each rank's CUDA index (None: a CPU net)
    precision: str = "32"  # "32" | "bf16" | "fp16"
    data_on_device: bool | str = "auto"  # keep the training set on the GPU (auto: if it fits)
    topic: str = ""
    rendezvous_timeout: float = 30.0
    collective_timeout: float = 60.0
    progress_interval: float = 0.5
    beacon_interval: float = 1.0
    host_reduce: bool = True  # average through shared memory where all ranks share a host
    stop_event: str = ""  # name of the Dask Event that asks for a stop at a safe point
    checkpoint: Any = None  # a CheckpointStore, or None
    checkpoint_epochs: int = 1  # save every n epochs (0: never at epoch ends)
    checkpoint_seconds: float = 0.0  # also save mid-epoch every m seconds (0: never)
    strategy: Any = None  # a scalekit.training.strategies object (None: DDP)
    callbacks: Any = None  # a callback_router.RoundCallbacks: the fit's callbacks so far
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # saved in states
    fit_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.__dict__.get("_spent"):
            # A rank trains the net in place (wrapped for DDP, with its reducer's shared
            # memory, its data feed's generators); Dask may still pickle the spec to
            # spill it when the worker is short of memory. What it spills is a marker
            # that refuses to start a rank: the running one keeps the original.
            return (SpentRankSpec, (self.run_id, self.generation))
        # skorch's __getstate__ pickles module_/optimizer_/criterion_ with the stdlib
        # pickle, i.e. by reference: a module class defined in a notebook (__main__)
        # then fails to unpickle on a worker, and again between workers. Send the net
        # by value, all of it.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        net = fields.pop("net")
        return (_spec_from, (fields, dumps_by_value(net)))


class SpentRankSpec:
    """What a :class:`RankSpec` pickles to once a rank started training its net."""

    def __init__(self, run_id: str, generation: int) -> None:
        self.run_id, self.generation = run_id, generation

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"the RankSpec of run {self.run_id} (generation {self.generation}) was pickled "
            "after a rank began training its net (Dask spilled it); a rank cannot start "
            "from it")


# A fresh worker may unpickle a RankSpec (on its event loop: it imports skorch and
# torch) while warm_worker imports the same packages in its executor thread. Concurrent
# first imports of one package can fail in CPython < 3.14 (KeyError('skorch') from
# importlib, python/cpython#83065), which failed whole fits: take turns.
FIRST_IMPORTS = threading.Lock()


def _spec_from(fields: dict[str, Any], net: bytes) -> RankSpec:
    import cloudpickle

    with FIRST_IMPORTS:
        return RankSpec(net=cloudpickle.loads(net), **fields)


def dumps_by_value(net: Any) -> bytes:
    """``cloudpickle.dumps(net)``, also for the parts skorch pickles itself (and
    TensorBoard writers as their recipe: see tracking)."""
    import cloudpickle
    import skorch.net

    from scalekit.training.tracking import dumps_by_value as dumps

    original = skorch.net.pickle
    skorch.net.pickle = cloudpickle  # its output loads with the stdlib unpickler
    try:
        return dumps(net)
    finally:
        skorch.net.pickle = original


@dataclasses.dataclass
class RankResult:
    """What a rank sends back: rank 0 carries the training state."""

    rank: int
    worker: str
    epochs_done: int
    stopped: str = "finished"  # "finished" | "resize" | "early"
    samples_per_s: float = 0.0
    peak_rss: int = 0  # bytes, highest resident memory of the rank's process seen
    state_bytes: int = 0  # bytes of parameters, gradients and optimizer state it held
    transport: str = ""  # how it averaged: "shared memory", "gloo", "nccl"
    log_messages: int = 0  # LogLines messages rank 0 sent (the controller waits for them)
    peak_gpu_memory: int = 0  # bytes, torch.cuda.max_memory_allocated on its GPU
    state: dict[str, Any] | None = None


def run_rank(spec: RankSpec, rank: int, X: Any, y: Any = None) -> RankResult:
    """Train ``spec.net`` as rank ``rank`` of ``spec.world_size`` (a Dask task)."""
    import torch
    import torch.distributed as dist
    from distributed import get_worker

    worker = get_worker()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, worker.state.nthreads))
    host = _host_of(worker.address)
    _pin_gloo_interface(host)
    publish = Publisher(worker, spec, rank)
    publish.rank_state(RankPhase.RENDEZVOUS)
    if spec.devices is not None:  # NCCL and the caching allocator use the current device
        torch.cuda.set_device(spec.devices[rank])
        torch.cuda.reset_peak_memory_stats()
    try:
        store = _rendezvous(spec, rank, host)
        if dist.is_initialized():  # left over from a failed round in this process
            dist.destroy_process_group()
        dist.init_process_group(
            spec.backend,
            store=dist.PrefixStore(f"{spec.run_id}/{spec.generation}", store),
            rank=rank,
            world_size=spec.world_size,
            timeout=timedelta(seconds=spec.collective_timeout),
        )
        try:
            return _train(spec, rank, worker.address, X, y, publish)
        except BaseException as exc:
            # where this rank got to: the controller counts the steps a failure cost
            # from it (progress messages are throttled, so they may lag by an epoch); a
            # rank that stopped only because a peer went away says so, so that the
            # views show one failure (the peer's) and its recovery, not one per rank
            phase = RankPhase.ABORTED if is_peer_failure(exc) else RankPhase.FAILED
            publish.rank_state(phase, reached=publish.position)
            if phase is RankPhase.ABORTED:  # the controller expects it: no red traceback
                expected_failure(worker.get_current_task())
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    finally:
        torch.set_num_threads(previous_threads)


def _train(spec: RankSpec, rank: int, address: str, X: Any, y: Any, publish: Publisher
           ) -> RankResult:
    import torch

    from scalekit.training.callback_router import CallbackRouter
    from scalekit.training.callbacks import RoundControl
    from scalekit.training.devices import autocast_dtype
    from scalekit.training.rank_output import printing_to_notebook
    from scalekit.training.saver import Saver
    from scalekit.training.shard_feed import fit_inputs
    from scalekit.training.strategies import DDP, RankSetup

    net = spec.net
    object.__setattr__(spec, "_spent", True)  # trained in place from here: see __reduce__
    strategy = spec.strategy or DDP()
    device = _place(net, spec, rank)
    ctx = RankContext(rank=rank, world_size=spec.world_size, seed=spec.seed,
                      on_batch=publish.batch, device=device,
                      autocast=autocast_dtype(spec.precision),
                      data_on_device=spec.data_on_device,
                      router=CallbackRouter(rank, spec.callbacks))
    state = spec.state
    if state is not None:
        partial = strategy.restore(net, state)
        if partial is not None:
            ctx.resume_epoch, ctx.resume_step = state["epoch"], state["step"]
            ctx.resume_batches = partial
    done_before = len(net.history)
    remaining = spec.max_epochs - done_before
    _seed_everything(spec.seed + 1000 * spec.generation + done_before)
    if state is not None and state.get("rng") is not None:
        torch.set_rng_state(state["rng"])  # continue the saved random stream
    par = strategy.prepare(net, RankSetup(
        world_size=spec.world_size, device_ids=[device.index] if device is not None else None,
        host_reduce=spec.host_reduce, timeout=spec.collective_timeout,
        precision=spec.precision))
    logger.debug("rank %d of round %d: %s", rank, spec.generation,
                 strategy.describe(spec.world_size))
    ctx.scaler = _grad_scaler(spec.precision, state)
    net.__dict__["_sk_scaler"] = ctx.scaler  # its state goes into checkpoints
    try:
        if state is not None:
            strategy.load(par, state, spec.checkpoint)
        if remaining <= 0:
            return _result(spec, rank, address, net, par, 0.0, "finished", publish)
        saver = Saver.for_rank(spec, par, rank, publish)
        if saver is not None:
            ctx.on_step = saver.mid_epoch_hook()
        started = time.perf_counter()
        publish.start_beacon(ctx)
        try:  # from here on the beacon runs: whatever fails, it stops
            ctx.router.prepare(net, address)  # rank 0: can its side effects write?
            make_distributed(net, ctx, par)
            control = RoundControl(
                rank, publish.epoch,
                save=saver.at_epoch_end if saver is not None else None,
                stop_requested=_stop_flag(spec.stop_event) if spec.stop_event else None,
                max_epochs=spec.max_epochs, state=state, router=ctx.router,
            )
            net.callbacks_.append(("scalekit_round", control))
            publish.rank_state(RankPhase.TRAINING)
            with fit_inputs(net, ctx, X, y, world_size=spec.world_size, rank=rank,
                            seed=spec.seed, state=state, publish=publish,
                            progress_interval=spec.progress_interval) as (X, y), \
                    printing_to_notebook(rank, publish.log):
                net.partial_fit(X, y, epochs=remaining, **spec.fit_params)
        finally:
            ctx.router.close(net)
            publish.stop_beacon()
            net.callbacks_ = [(n, cb) for n, cb in net.callbacks_ if n != "scalekit_round"]
            undo_distributed(net)
        done = len(net.history) - done_before
        stopped = "resize" if control.stopped else ("early" if done < remaining else "finished")
        publish.rank_state(RankPhase.DONE)
        return _result(spec, rank, address, net, par, time.perf_counter() - started, stopped,
                       publish)
    finally:
        par.close()


def _result(spec: RankSpec, rank: int, address: str, net: Any, par: Any, elapsed: float,
            stopped: str, publish: Publisher) -> RankResult:
    from scalekit.training.strategies import StateMeta

    rows = list(net.history)
    recent = rows[-max(1, len(rows)):]
    samples = sum(r.get("train_samples_per_s", 0.0) * r.get("dur", 0.0) for r in recent)
    result = RankResult(rank=rank, worker=address, epochs_done=len(rows), stopped=stopped,
                        samples_per_s=samples / elapsed if elapsed else 0.0,
                        peak_rss=publish.sample_rss(),
                        state_bytes=par.local_state_bytes(net.optimizer_),
                        transport=par.transport, peak_gpu_memory=_peak_gpu_memory(spec),
                        log_messages=publish.log_messages)
    # every rank calls it (a collective for sharded strategies); rank 0 gets the state
    result.state = par.strategy.state_dict(
        par, rank=rank, epoch=len(rows), step=0,
        meta=StateMeta(world_size=spec.world_size, seed=spec.seed, run_id=spec.run_id,
                       config=spec.run_config))
    return result


def _stop_flag(name: str) -> Any:
    from distributed import Event, get_client

    event = Event(name, client=get_client())
    return event.is_set


# -- rendezvous -----------------------------------------------------------------------


def rendezvous_name(run_id: str, generation: int) -> str:
    """The Dask ``Variable`` through which a round's ranks learn rank 0's store address
    (the controller deletes it when the round ends)."""
    return f"scalekit-rdzv-{run_id}-{generation}"


def _rendezvous(spec: RankSpec, rank: int, host: str) -> Any:
    """Rank 0 hosts a TCPStore on an OS-chosen port; the others learn it via Dask."""
    import torch.distributed as dist
    from distributed import Variable, get_client

    timeout = timedelta(seconds=spec.rendezvous_timeout)
    var = Variable(rendezvous_name(spec.run_id, spec.generation), client=get_client())
    if rank == 0:
        store = listening_store(host, spec.world_size, timeout)
        var.set(f"{host}:{store.port}")
        return store
    try:
        address = var.get(timeout=spec.rendezvous_timeout)
    except TimeoutError as exc:
        raise RendezvousError(
            f"rank {rank} waited {spec.rendezvous_timeout:g}s for rank 0's store address"
        ) from exc
    master, port = address.rsplit(":", 1)
    return dist.TCPStore(master, int(port), spec.world_size, is_master=False, timeout=timeout)


def listening_store(host: str, world_size: int, timeout: timedelta) -> Any:
    """A master ``TCPStore`` that listens on ``host`` only, on an OS-chosen port.

    Left to itself the store listens on every interface (``::``), unauthenticated:
    anyone who reaches the machine could join or poison a round. Bound to the worker's
    own address it is reachable exactly where the worker is.
    """
    import socket

    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
    except BaseException:
        listener.close()
        raise
    fd = listener.detach()  # the store owns the socket from here on
    try:
        return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout,
                             wait_for_workers=False, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


class RendezvousError(ScalekitError, TimeoutError):
    """The ranks of a round did not all meet in time (a peer is missing)."""


def _host_of(address: str) -> str:
    hostport = address.split("://", 1)[-1]
    return hostport.rsplit(":", 1)[0].strip("[]")


def _pin_gloo_interface(host: str) -> None:
    """Make gloo use the interface that carries the worker's address.

    Gloo otherwise resolves the machine's hostname, which in containers and sandboxes
    often points at an interface the other ranks cannot reach.
    """
    if "GLOO_SOCKET_IFNAME" in os.environ:
        return
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == host for a in addresses):
            os.environ["GLOO_SOCKET_IFNAME"] = name
            return


def _place(net: Any, spec: RankSpec, rank: int) -> Any:
    """Move the net to this rank's device; return it (``None`` for a CPU net).

    The notebook initialises and checks the net on the CPU (it may have no GPU, and
    should not hold a CUDA context); here the module and criterion move to the GPU the
    controller gave this rank, before any state is loaded into them.
    """
    if spec.devices is None:
        return None
    import torch

    device = torch.device("cuda", spec.devices[rank])
    net.device = str(device)  # where skorch puts every batch and prediction
    for name in ("module_", "criterion_"):
        part = getattr(net, name, None)
        if isinstance(part, torch.nn.Module):
            part.to(device)
    return device


def _grad_scaler(precision: str, state: dict[str, Any] | None) -> Any:
    """fp16 needs loss scaling. The plain GradScaler serves every strategy: with FSDP2
    the gradients are DTensors, whose overflow check DTensor reduces across the mesh
    (``found_inf_reduce_handler``), so the sharded ranks skip a step together."""
    if precision != "fp16":
        return None
    import torch

    scaler = torch.amp.GradScaler("cuda")
    saved = (state or {}).get("grad_scaler")
    if saved:  # the scale a resumed fp16 run had reached
        scaler.load_state_dict(saved)
    return scaler


def _peak_gpu_memory(spec: RankSpec) -> int:
    if spec.devices is None:
        return 0
    import torch

    return int(torch.cuda.max_memory_allocated())


# -- state -----------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
