"""The elastic controller: runs a distributed fit from the notebook process.

It checks the inputs before anything is shipped, sends the data to the workers once,
and then runs *rounds* (:mod:`.rounds`): a round trains on a fixed set of workers until
the fit is done, until it stops at a safe point because workers joined or a shrink was
asked for (the state moves to the next round; nothing is lost), or until a rank is lost,
hangs or fails. After a failure the pure policy (:mod:`.policy`) decides: restore from
the newest state (the last checkpoint or the last resize) on the workers left, or give
up with a clear error. Progress messages from the ranks become events on the bus.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit.config import CheckpointConfig, TrainConfig
from scalekit.errors import TrainingError, UsageError
from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    EventBus,
    Notice,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    RunStarted,
    TrainingReport,
)
from scalekit.training import devices
from scalekit.training import state as training_state
from scalekit.training.checkpoint import CheckpointStore
from scalekit.training.policy import (
    decide_after_failure,
    failures_in_a_row,
    useful_world_size,
)
from scalekit.training.preflight import batch_size as _batch_size
from scalekit.training.preflight import check_net, preflight
from scalekit.training.preflight import n_samples as _n_samples
from scalekit.training.rank import RankResult, RankSpec
from scalekit.training.rounds import (
    SILENT_FACTOR,
    Beacons,
    Round,
    RoundOutcome,
    bounded,
    kill_local_or_restart,
    unresponsive,
)
from scalekit.training.rounds import is_peer_failure as _is_peer_failure  # noqa: F401

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger(__name__)


class TrainingController:
    """Drive one elastic, distributed fit of a skorch net on the workers of ``client``.

    Parameters
    ----------
    client : distributed.Client
        Connected to the cluster.
    net : skorch.NeuralNet
        The user's net; it is initialized here and receives the trained state.
    X, y :
        Training data as skorch accepts it (arrays, tensors, dicts, a Dataset).
    bus : EventBus
        Where progress events go.
    config : TrainConfig
        Seeds, timeouts, failure budget.
    checkpoint : str or CheckpointStore, optional
        Where checkpoints go (default: a fresh folder per run, see CheckpointConfig).
    resume : bool
        Continue from the newest checkpoint at ``checkpoint``.
    fit_params : dict
        Passed to ``net.partial_fit`` on each rank.
    max_world : int, optional
        Largest world size to use (default: every worker).
    scale_to : callable(int), optional
        How to shrink the cluster once a round stopped for a planned scale-down.
    """

    def __init__(
        self, client: Client, net: Any, X: Any, y: Any = None, *, bus: EventBus | None = None,
        config: TrainConfig | None = None, fit_params: dict[str, Any] | None = None,
        run_id: str | None = None, checkpoint: str | CheckpointStore | bool | None = None,
        checkpoint_config: CheckpointConfig | None = None, resume: bool = False,
        max_world: int | None = None, scale_to: Callable[[int], None] | None = None,
        strategy: Any = "ddp",
    ) -> None:
        from scalekit.training.strategies import resolve

        checkpoint, resume, max_world = _checked_arguments(checkpoint, resume, max_world)
        self.strategy = resolve(strategy)
        self.client = client
        self.net = net
        self.X = X
        self.y = y
        self.bus = bus or EventBus()
        self.config = config or TrainConfig.from_config()
        self.ckpt_config = checkpoint_config or CheckpointConfig.from_config()
        self.fit_params = fit_params or {}
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.topic = f"scalekit-run-{self.run_id}"
        self.checkpoint = checkpoint  # a URL, a CheckpointStore, None (default), False (off)
        self.resume = resume
        self.max_world = max_world or 10_000
        self.scale_to = scale_to
        self.generation = 0
        self.failures = 0  # failures in a row, without progress in between
        self._restored_from: tuple[int, int] | None = None  # where the last one restored to
        self.results: list[RankResult] = []
        self.store: CheckpointStore | None = None
        self._beacons = Beacons()
        self._shrink_to: int | None = None
        self._data: list[Future] = []
        self._state: dict[str, Any] | None = None  # newest state known to the controller
        self._resized: tuple[int, str] | None = None  # (old world, reason) until reported
        self._current: Round | None = None
        self._cancelled = False
        self.device_type = "cpu"
        self.backend = "gloo"  # the process group's, set by fit() from the net's device
        self._devices: dict[str, devices.WorkerDevices] = {}  # GPU inventory per worker
        self._gpu_index: dict[str, int] = {}  # each placed worker's CUDA index
        self._sitting_out: set[str] = set()  # workers a cuda fit cannot place (announced)

    # -- public ------------------------------------------------------------------------
    def fit(self) -> Any:
        """Train; return the user's net, fitted. Raises :class:`TrainingError` on failure."""
        net = self.net
        check_net(net)
        self.device_type = devices.device_type(net.device)
        devices.check_precision(self.config.precision, self.device_type)
        self.backend = devices.process_group_backend(self.config.backend, self.device_type)
        if self.device_type == "cuda":  # before anything is made or sent
            self._check_placement(self._wait_for_workers(placeable=False)[: self.max_world])
        if self.max_world > 1 and self._workers_in_process():
            # torch.distributed has one process group per process: threads of one
            # process cannot form a world of several ranks
            self.max_world = 1
            self.bus.publish(Notice(level="info", message=(
                "the workers are threads of this process (processes=False): the fit "
                "trains on one of them")))
        self.store = self._open_store()
        if self.resume:
            self._state = self._load_checkpoint(required=True)
        with _on_cpu(net):  # the kernel may have no GPU; it should hold no CUDA context
            if not getattr(net, "warm_start", False) or not getattr(net, "initialized_", False):
                net.initialize()  # as skorch's fit does; before the probe, so seeds match
            preflight(net, self.X, self.y)
        # skorch's meaning: a fit runs max_epochs (more, under warm_start); a resumed fit
        # continues the saved run up to max_epochs in all
        start_epoch = self._epoch_of(self._state) if self.resume else len(net.history)
        max_epochs = net.max_epochs if self.resume else len(net.history) + net.max_epochs
        self.max_epochs = max_epochs
        workers = self._wait_for_workers()
        self.bus.publish(RunStarted(
            run_id=self.run_id, max_epochs=max_epochs, batch_size=_batch_size(net),
            n_samples=_n_samples(self.X), world_size=min(len(workers), self.max_world),
            start_epoch=start_epoch,
        ))
        self.client.subscribe_topic(self.topic, self._on_message)
        try:
            self._loop()
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.bus.publish(RunFinished(run_id=self.run_id, status=status,
                                         epochs=self._epoch_of(self._state), message=str(exc)))
            raise
        finally:
            self.client.unsubscribe_topic(self.topic)
            self._release_data()
        training_state.restore(net, self._state)
        _to_user_device(net)
        self._drop_default_checkpoints()
        self.bus.publish(self.report())
        self.bus.publish(RunFinished(run_id=self.run_id, status="finished",
                                     epochs=len(net.history)))
        return net

    def report(self) -> TrainingReport:
        """Memory and throughput of the last round, per rank."""
        results = sorted(self.results, key=lambda r: r.rank)
        return TrainingReport(
            run_id=self.run_id, strategy=self.strategy.name, world_size=len(results),
            samples_per_s=results[0].samples_per_s if results else 0.0,
            peak_rss=tuple(r.peak_rss for r in results),
            state_bytes=tuple(r.state_bytes for r in results),
            transport=tuple(r.transport for r in results),
            peak_gpu_memory=(tuple(r.peak_gpu_memory for r in results)
                             if any(r.peak_gpu_memory for r in results) else ()),
        )

    def cancel(self) -> None:
        """Stop the fit now (from another thread); ``fit`` raises KeyboardInterrupt."""
        self._cancelled = True
        if self._current is not None:
            self._current.cancelled.set()

    def request_shrink(self, n: int) -> None:
        """Shrink to ``n`` workers at the next safe point (called by the session)."""
        self._shrink_to = n

    def useful_workers(self) -> int:
        """The largest world this fit still gains from (its demand on adaptive scaling)."""
        return useful_world_size(_n_samples(self.X), _batch_size(self.net),
                                 max_workers=min(self.max_world, 4096))

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            workers = self._wait_for_workers()[: self.max_world]
            if self._resized is not None:  # report the world the resize really led to
                old, reason = self._resized
                self._resized = None
                self.bus.publish(Resized(run_id=self.run_id, old=old, new=len(workers),
                                         epoch=self._epoch_of(self._state), reason=reason))
            outcome = self._round(workers)
            if outcome.kind == "finished":
                self.results = outcome.results
                self._state = outcome.results[0].state
                return
            if outcome.kind == "retry":  # workers changed while the round started
                continue
            if outcome.kind == "resize":
                self._after_resize(workers, outcome)
            else:
                self._after_failure(workers, outcome)

    def _round(self, workers: list[str]) -> RoundOutcome:
        spec = RankSpec(
            run_id=self.run_id, generation=self.generation, world_size=len(workers),
            net=self.net, max_epochs=self.max_epochs, state=self._state,
            seed=self.config.seed, backend=self.backend, topic=self.topic,
            devices=(tuple(self._gpu_index[w] for w in workers)
                     if self.device_type == "cuda" else None),
            precision=self.config.precision, data_on_device=self.config.data_on_device,
            rendezvous_timeout=self.config.rendezvous_timeout,
            collective_timeout=self.config.collective_timeout,
            progress_interval=self.config.progress_interval,
            beacon_interval=self.config.beacon_interval, host_reduce=self.config.host_reduce,
            stop_event=f"scalekit-stop-{self.run_id}-g{self.generation}",
            checkpoint=self.store, checkpoint_epochs=self.ckpt_config.every_epochs,
            checkpoint_seconds=self.ckpt_config.every_seconds, fit_params=self.fit_params,
            strategy=self.strategy, run_config=self._run_config(),
        )
        self._current = Round(
            self.client, spec, workers, self._ensure_data, beacons=self._beacons,
            hang_timeout=self.config.hang_timeout, max_world=self.max_world,
            shrink_to=lambda: self._shrink_to,
            kill=lambda address, where: kill_local_or_restart(self.client, address, where),
            eligible=self._joinable, stall_timeout=self.config.stall_timeout,
        )
        if self._cancelled:
            self._current.cancelled.set()
        try:
            return self._current.run()
        finally:
            self.generation += 1

    def _after_resize(self, workers: list[str], outcome: RoundOutcome) -> None:
        self._state = outcome.results[0].state
        shrink, self._shrink_to = self._shrink_to, None
        if shrink is not None and self.scale_to is not None:
            self.scale_to(shrink)
            self._wait_for_count(shrink)
        self._resized = (len(workers), "scale down" if shrink is not None else "workers joined")

    def _after_failure(self, workers: list[str], outcome: RoundOutcome) -> None:
        failure = outcome.failure
        assert failure is not None
        if failure.rank is not None:
            self.bus.publish(RankStatus(run_id=self.run_id, rank=failure.rank,
                                        worker=failure.worker or "", state="failed",
                                        generation=self.generation - 1))
        if failure.kind == "user":  # a bug a retry would repeat: nothing to restore
            self._raise(failure, outcome, decide_after_failure(
                failure, failures_so_far=0, max_failures=1, workers_alive=0).reason)
        if self.store is not None:
            # the failed round's writers have ended: a temporary file is now an orphan
            # (during a round, pruning spares fresh ones: they may be a live writer's)
            try:
                self.store.prune_temporaries(grace_s=0.0)
            except Exception:
                logger.debug("could not prune %s", self.store.url, exc_info=True)
        # load_latest falls back past any checkpoint that fails to load (damaged, pruned
        # under a stale listing, refused); only when none loads does it raise
        newest = self._load_checkpoint(required=False)
        if newest is not None and self._newer(newest, self._state):
            self._state = newest
        # the budget counts failures in a row: saved progress since the last one resets it
        position = _position_of(self._state)
        progressed = self._restored_from is None or position > self._restored_from
        self.failures = failures_in_a_row(self.failures, progressed)
        alive = len(self.client.nthreads())
        decision = decide_after_failure(failure, failures_so_far=self.failures - 1,
                                        max_failures=self.config.max_failures,
                                        workers_alive=alive)
        if decision.action == "give_up":
            self._raise(failure, outcome, decision.reason)
        self._restored_from = position
        self.bus.publish(Notice(level="warning", message=f"recovering: {decision.reason}"))
        self._recovery = (outcome.failed_at, self._progress, decision.reason)

    def _raise(self, failure: Any, outcome: RoundOutcome, reason: str) -> None:
        where = f"rank {failure.rank} on worker {failure.worker}"
        exc = outcome.error
        if exc is None:
            raise TrainingError(f"{where} {failure.kind}: {reason}. The cluster is still usable.",
                                rank=failure.rank, worker=failure.worker)
        tb = "".join(traceback.format_exception(exc))
        raise TrainingError(
            f"{where} failed: {type(exc).__name__}: {exc}\n"
            f"--- traceback on the worker ---\n{tb}",
            rank=failure.rank, worker=failure.worker, remote_traceback=tb,
        ) from exc

    # -- data, state and checkpoints ------------------------------------------------------
    def _ensure_data(self) -> list[Future]:
        """The data's futures, on every worker; sent again if all copies were lost.

        Arrays and tensors are scattered once to every worker. Dask collections are
        computed on the cluster (each partition where it already lives) into one array,
        then replicated to the workers; it never passes through the notebook.
        """
        if self._data and all(f.status == "finished" for f in self._data):
            return self._data
        from dask import is_dask_collection

        if any(is_dask_collection(d) for d in (self.X, self.y)):
            parts = [self.client.compute(d) if is_dask_collection(d) else d
                     for d in (self.X, self.y)]
            local = [d for d in parts if not hasattr(d, "key")]
            scattered = iter(self.client.scatter(local, hash=False) if local else [])
            self._data = [d if hasattr(d, "key") else next(scattered) for d in parts]
            self.client.replicate(self._data)
        else:
            # bounded, like the round's own scatter: a stopped worker answers nothing
            self._data = bounded(
                lambda: self.client.scatter([self.X, self.y], broadcast=True, hash=False),
                self.config.rendezvous_timeout, "sending the data")
        return self._data

    def _release_data(self) -> None:
        """Let the workers drop this fit's data (the futures would otherwise keep it
        there as long as the controller lives)."""
        for future in self._data:
            try:
                future.release()
            except Exception:
                logger.debug("could not release %s", future, exc_info=True)
        self._data = []

    def _open_store(self) -> CheckpointStore | None:
        if self.checkpoint is False:
            if self.resume:
                raise UsageError("resume=True needs a checkpoint folder, not checkpoint=False")
            return None  # no checkpoints: a failure restarts from the last resize or start
        if isinstance(self.checkpoint, str) and self.checkpoint.startswith("memory://") \
                and not self._workers_in_process():
            raise UsageError(
                "memory:// checkpoints live in one process, but the workers run in their own "
                "processes and could not share them; use a folder or an s3:// / gs:// URL"
            )
        if isinstance(self.checkpoint, CheckpointStore):
            store = self.checkpoint
        else:
            url = self.checkpoint or self.ckpt_config.default_url(self.run_id)
            store = CheckpointStore(url, keep=self.ckpt_config.keep)
        if not self.resume and store.exists():
            raise UsageError(
                f"{store.url} already holds checkpoints of an earlier fit; pass resume=True "
                "to continue it, or choose another checkpoint folder (nothing was changed)"
            )
        return store

    def _workers_in_process(self) -> bool:
        """Whether the workers are threads of this process (``processes=False``)."""
        import os

        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers") or {}
            if any(w.get("nanny") for w in workers.values()):
                return False  # worker processes (asking them could wait on a stopped one)
            pids = self.client.run(os.getpid)
        except Exception:
            return False
        return bool(pids) and all(pid == os.getpid() for pid in pids.values())

    def _run_config(self) -> dict[str, Any]:
        """What a checkpoint records about the run that wrote it."""
        import dataclasses

        net = self.net
        return {
            "net": type(net).__name__,
            "module": getattr(net.module, "__name__", type(net.module).__name__),
            "max_epochs": self.max_epochs, "batch_size": _batch_size(net),
            "lr": float(getattr(net, "lr", 0.0)), "strategy": self.strategy.name,
            "training": dataclasses.asdict(self.config),
            "checkpoint": dataclasses.asdict(self.ckpt_config),
        }

    def _drop_default_checkpoints(self) -> None:
        """A run that named no checkpoint folder leaves none behind once it succeeded."""
        if self.checkpoint is not None or self.store is None:  # named, or none at all
            return
        try:
            self.store.fs.rm(self.store.root, recursive=True)
        except (FileNotFoundError, OSError):
            logger.debug("could not remove %s", self.store.url, exc_info=True)

    def _load_checkpoint(self, *, required: bool) -> dict[str, Any] | None:
        if self.store is None:
            return None
        if not self.store.exists():
            if required:
                raise UsageError(f"resume=True but {self.store.url} holds no checkpoint")
            return None
        state, info = self.store.load_latest()
        return state

    @staticmethod
    def _epoch_of(state: dict[str, Any] | None) -> int:
        return int(state["epoch"]) if state else 0

    @staticmethod
    def _newer(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
        return b is None or (a["epoch"], a["step"]) > (b["epoch"], b["step"])

    def _apply(self, result: RankResult) -> None:
        """Load rank 0's final state into the user's net."""
        if result.state is not None:
            training_state.restore(self.net, result.state)

    # -- waiting -------------------------------------------------------------------------
    def _wait_for_workers(self, placeable: bool = True) -> list[str]:
        """The workers a round can use now (waiting while there are none)."""
        deadline = time.monotonic() + self.config.wait_for_workers
        announced = False
        while True:
            workers = sorted(self.client.nthreads())
            if placeable:
                workers = self._placeable(self._responsive(workers))
            if workers:
                return workers
            if not announced:
                self.bus.publish(Notice(level="warning", message=(
                    "waiting for workers: the cluster has none "
                    f"(up to {self.config.wait_for_workers:g}s)")))
                announced = True
            if time.monotonic() > deadline:
                raise TrainingError(
                    f"the cluster has no workers after {self.config.wait_for_workers:g}s; "
                    "scale it up (session.scale(2) or %scalekit scale 2) and fit again"
                )
            time.sleep(0.2)

    def _wait_for_count(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.client.nthreads()) > n and time.monotonic() < deadline:
            time.sleep(0.1)

    def _responsive(self, workers: list[str]) -> list[str]:
        """``workers`` without those that stopped answering (their heartbeats stopped
        before the others'): those are ended (their nanny starts fresh ones) instead of
        being made ranks of a round that would wait for them."""
        try:
            silent = unresponsive(self.client, workers,
                                  SILENT_FACTOR * self.config.hang_timeout)
        except Exception:  # a scheduler hiccup: judge them at the round's set-up
            return workers
        for address in silent:
            logger.warning("ending worker %s: no heartbeat for over %gs", address,
                           SILENT_FACTOR * self.config.hang_timeout)
            kill_local_or_restart(self.client, address, None)
        return [w for w in workers if w not in silent]

    # -- devices -------------------------------------------------------------------------
    def _placeable(self, workers: list[str]) -> list[str]:
        """``workers`` that can take a rank of this fit, in order.

        Every worker can take a CPU net's rank. A cuda net's ranks need a GPU each:
        workers without one, or whose GPUs are taken by other ranks on their host, sit
        this fit out (announced once each); the GPU each placed worker uses is kept for
        the round's spec.
        """
        if self.device_type != "cuda":
            return workers
        index, left_out = devices.assign_gpus(self._inventory(workers))
        for worker, reason in left_out.items():
            if worker not in self._sitting_out:
                self._sitting_out.add(worker)
                self.bus.publish(Notice(level="warning",
                                        message=f"{reason}; it sits this fit out"))
        self._gpu_index.update(index)
        return [w for w in workers if w in index]

    def _joinable(self, current: list[str], joining: list[str]) -> list[str]:
        """The ``joining`` workers that can take a rank beside the ``current`` ones (a
        new worker whose only GPU a current rank holds cannot)."""
        placed = set(self._placeable([*current, *joining]))
        return [w for w in joining if w in placed]

    def _inventory(self, workers: list[str]) -> list[devices.WorkerDevices]:
        """What each worker can compute on (asked once per worker, then remembered)."""
        missing = [w for w in workers if w not in self._devices]
        if missing:
            found = self.client.run(devices.worker_devices, workers=missing,
                                    on_error="return")
            for worker, info in found.items():
                if isinstance(info, devices.WorkerDevices):
                    self._devices[worker] = info
        return [self._devices[w] for w in workers if w in self._devices]

    def _check_placement(self, workers: list[str]) -> None:
        """Before a cuda fit starts: every worker gets a GPU of its own, and NCCL."""
        inventory = self._inventory(workers)
        _, left_out = devices.assign_gpus(inventory)
        if left_out:
            raise devices.placement_error(left_out, len(workers))
        if self.backend != "gloo":
            without = [w.worker for w in inventory if not w.nccl]
            if without:
                raise devices.nccl_error(without)

    # -- messages from the ranks ---------------------------------------------------------
    _progress: tuple[int, int, int] = (0, 0, 1)  # epoch, batch, batches per epoch
    _progress_generation = 0  # the round that sent _progress
    _recovery: tuple[float, tuple[int, int, int], str] | None = None

    def _on_message(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        kind = msg.get("kind")
        if kind == "beat":
            self._beacons.beat(int(msg["generation"]), int(msg["rank"]), str(msg["host"]),
                               int(msg["pid"]), step=int(msg.get("step", 0)),
                               waiting=bool(msg.get("waiting", False)))
        elif kind == "batch":
            self._note_recovered(msg)
            self._progress = _position(msg)
            self._progress_generation = int(msg.get("generation", 0))
            self.bus.publish(BatchProgress(
                run_id=self.run_id, epoch=int(msg["epoch"]), batch=int(msg["batch"]),
                n_batches=int(msg["n_batches"]), samples_per_s=float(msg["samples_per_s"])))
        elif kind == "epoch":
            self._note_recovered(msg)
            self.bus.publish(EpochEnded(run_id=self.run_id, epoch=int(msg["epoch"]),
                                        row=dict(msg["row"]), world_size=msg["world_size"]))
        elif kind == "checkpoint":
            self.bus.publish(CheckpointSaved(
                run_id=self.run_id, epoch=int(msg["epoch"]), step=int(msg["step"]),
                url=str(msg["url"]), seconds=float(msg["seconds"]),
                nbytes=int(msg.get("nbytes", 0))))
        elif kind == "rank":
            self.bus.publish(RankStatus(run_id=self.run_id, rank=int(msg["rank"]),
                                        worker=str(msg["worker"]), state=str(msg["state"]),
                                        generation=int(msg.get("generation", 0))))
            if msg["state"] == "training" and int(msg["rank"]) == 0:
                self._note_recovered(msg)
            elif (msg["state"] == "failed" and "batch" in msg
                  and int(msg.get("generation", 0)) >= self._progress_generation):
                self._note_reached(_position(msg))

    def _note_reached(self, position: tuple[int, int, int]) -> None:
        """A failed rank said how far it got: the work lost is counted from there if
        that is past the last (throttled) progress message."""
        if _steps(position) > _steps(self._progress):
            self._progress = position
        recovery = self._recovery
        if recovery is not None and _steps(position) > _steps(recovery[1]):
            self._recovery = (recovery[0], position, recovery[2])

    def _note_recovered(self, msg: dict[str, Any]) -> None:
        """The first sign of life after a failure: report downtime and lost work."""
        recovery, self._recovery = self._recovery, None
        if recovery is None:
            return
        failed_at, reached, reason = recovery
        state = self._state or {"epoch": 0, "step": 0}
        lost = _steps(reached) - _steps((int(state["epoch"]), int(state["step"]), reached[2]))
        self.bus.publish(Recovered(
            run_id=self.run_id, reason=reason, epoch=int(state["epoch"]),
            step=int(state["step"]), world_size=int(msg.get("world_size", 0)),
            lost_steps=max(0, lost), downtime_s=time.monotonic() - failed_at,
        ))


def _checked_arguments(checkpoint: Any, resume: Any, max_world: Any) -> tuple[Any, bool, Any]:
    """``sk.fit``'s checkpoint, resume and max_workers, validated like config fields."""
    import os

    from scalekit.errors import ConfigError

    if checkpoint is True:
        raise ConfigError(
            "checkpoint", True, "a folder path or fsspec URL, False (no checkpoints) or "
            "None (a fresh folder per run)",
            "Leave it out for the default folder, or name one: checkpoint='./ckpt/run1'.")
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if not (checkpoint is None or checkpoint is False or isinstance(checkpoint, str)
            or isinstance(checkpoint, CheckpointStore)):
        raise ConfigError("checkpoint", checkpoint,
                          "a folder path or fsspec URL, False or None")
    if isinstance(checkpoint, str) and not checkpoint.strip():
        raise ConfigError("checkpoint", checkpoint, "a non-empty folder path or URL")
    if not isinstance(resume, bool):
        raise ConfigError("resume", resume, "True or False")
    if max_world is not None and (not isinstance(max_world, int) or isinstance(max_world, bool)
                                  or max_world < 1):
        raise ConfigError("max_workers", max_world, "an integer >= 1, or None for every worker",
                          "It caps the world size of the fit; the cluster keeps its workers.")
    return checkpoint, resume, max_world


class _on_cpu:  # noqa: N801 - a context manager used like a function
    """Set a skorch net's device to the CPU for a while (initialise, probe)."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.device = net.device

    def __enter__(self) -> None:
        self.net.device = "cpu"

    def __exit__(self, *exc: object) -> None:
        self.net.device = self.device


def _to_user_device(net: Any) -> None:
    """Put the fitted net where its ``device`` says, as skorch's ``fit`` leaves it.

    A cuda net fitted from a kernel without a GPU (a laptop driving GPU workers) stays
    on the CPU with ``device='cpu'``, as skorch does when it loads a CUDA net there.
    """
    if devices.device_type(net.device) != "cuda":
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


def _position_of(state: dict[str, Any] | None) -> tuple[int, int]:
    return (int(state["epoch"]), int(state["step"])) if state else (0, 0)


def _position(msg: dict[str, Any]) -> tuple[int, int, int]:
    """(epoch, steps done in it, steps per epoch) from a rank's message."""
    return int(msg["epoch"]), int(msg["batch"]), int(msg["n_batches"])


def _steps(position: tuple[int, int, int]) -> int:
    epoch, batch, per_epoch = position
    return epoch * per_epoch + batch


__all__ = ["TrainingController", "check_net", "preflight"]
