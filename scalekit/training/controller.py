"""The elastic controller: runs a distributed fit from the notebook process.

It checks the inputs before anything is shipped, sends the data to the workers once
(:mod:`.worker_data`), and then runs *rounds* (:mod:`.rounds`) on the workers a fit can
use (:mod:`.placement`): a round trains on a fixed set of workers until the fit is done,
until it stops at a safe point because workers joined or a shrink was asked for (the
state moves to the next round; nothing is lost), or until a rank is lost, hangs or
fails. After a failure the pure policy (:mod:`.policy`) decides: restore from the
newest state (the last checkpoint or the last resize) on the workers left, or give up
with a clear error. The fit moves through explicit states (:mod:`.run_state`), and each
move publishes its events; the ranks' messages arrive through the :mod:`.inbox`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit.config import CheckpointConfig, TrainConfig
from scalekit.events import (
    Event,
    EventBus,
    Notice,
    RankStatus,
    Resized,
    RunFinished,
    RunStarted,
    TrainingReport,
)
from scalekit.training import callback_state, devices
from scalekit.training import state as training_state
from scalekit.training.callback_prep import prepare_in_notebook
from scalekit.training.checkpoint import CheckpointStore
from scalekit.training.fit_store import FitCheckpoints, run_config
from scalekit.training.inbox import Inbox
from scalekit.training.messages import Position
from scalekit.training.placement import WorkerPool
from scalekit.training.policy import (
    Action,
    FailureKind,
    decide_after_failure,
    training_error,
    useful_world_size,
)
from scalekit.training.preflight import batch_size as _batch_size
from scalekit.training.preflight import check_net, checked_fit_arguments, preflight
from scalekit.training.preflight import n_samples as _n_samples
from scalekit.training.rank import RankResult, RankSpec
from scalekit.training.rounds import Beacons, OutcomeKind, Round, RoundOutcome
from scalekit.training.run_state import (
    FailureBudget,
    Recovery,
    RunState,
    check_transition,
    newer,
    position_of,
)
from scalekit.training.worker_data import ShardedData, WorkerData, model_bytes
from scalekit.training.worker_ops import kill_local_or_restart as _kill

if TYPE_CHECKING:
    from distributed import Client

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
    strategy : str or Strategy
        How the model is spread over the ranks (``scalekit.strategies``).
    sampling : {"exact", "sharded"}, optional
        How ranks read the data (:mod:`scalekit.data.inputs`); by default exact for
        in-memory data, sharded for sources and Dask collections.
    transformers : object, optional
        A pipeline's steps before the net (sharded data): fitted partition-wise on the
        cluster before training, then applied by the ranks to each window they read.
    echo : callable(stream, text), optional
        Shows what rank 0 prints (skorch's ``PrintLog`` rows, ...), called from the
        thread that runs :meth:`fit` (``scalekit.fitting`` prints in the notebook's cell
        when the fit runs in the foreground). The lines are ``LogLine`` events either way.

    Attributes
    ----------
    state : RunState
        Where the fit stands; it changes only through :meth:`_enter`.
    """

    def __init__(
        self, client: Client, net: Any, X: Any, y: Any = None, *, bus: EventBus | None = None,
        config: TrainConfig | None = None, fit_params: dict[str, Any] | None = None,
        run_id: str | None = None, checkpoint: str | CheckpointStore | bool | None = None,
        checkpoint_config: CheckpointConfig | None = None, resume: bool = False,
        max_world: int | None = None, scale_to: Callable[[int], None] | None = None,
        strategy: Any = "ddp", sampling: str | None = None, transformers: Any = None,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        from scalekit.data.inputs import resolve_sampling
        from scalekit.training.strategies import resolve

        checkpoint, resume, max_world = checked_fit_arguments(checkpoint, resume, max_world)
        self.strategy = resolve(strategy)
        self.sampling, X = resolve_sampling(X, y, sampling)
        self.client = client
        self.net = net
        self.X = X
        self.y = y
        self.bus = bus or EventBus()
        self.config = config or TrainConfig.from_config()
        self.ckpt_config = checkpoint_config or CheckpointConfig.from_config()
        self.fit_params = fit_params or {}
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.echo = echo
        self.cwd = os.getcwd()  # relative folders of side-effect callbacks start here
        self.topic = f"scalekit-run-{self.run_id}"
        self.resume = resume
        self.max_world = max_world or 10_000
        self.max_epochs = 0  # of the whole fit, set by fit()
        self.scale_to = scale_to
        self.checkpoints = FitCheckpoints(checkpoint, resume=resume, config=self.ckpt_config,
                                          run_id=self.run_id)
        self.workers = WorkerPool(client, self.bus, self.config)
        self.data: WorkerData | ShardedData = (
            ShardedData(client, X, timeout=self.config.rendezvous_timeout,
                        transformers=transformers)
            if self.sampling == "sharded"
            else WorkerData(client, X, y, timeout=self.config.rendezvous_timeout))
        self.inbox = Inbox(self.run_id, self.bus, Beacons(), on_alive=self._on_alive,
                           on_reached=self._on_reached)
        self.generation = 0
        self.results: list[RankResult] = []
        self.state = RunState.STARTING
        self._lock = threading.Lock()  # the inbox moves RECOVERING -> RUNNING
        self._budget = FailureBudget()
        self._recovery: Recovery | None = None  # pending while RECOVERING
        self._resize: tuple[int, str] | None = None  # (old world, reason) while RESIZING
        self._newest: dict[str, Any] | None = None  # newest training state known here
        self._shrink_to: int | None = None
        self._current: Round | None = None
        self._cancelled = False

    # -- public ------------------------------------------------------------------------
    def fit(self) -> Any:
        """Train; return the user's net, fitted. Raises :class:`TrainingError` on failure."""
        try:
            try:
                self._start()
            except BaseException:
                self.data.release()  # partitions a Dask source computed
                raise
            self.client.subscribe_topic(self.topic, self.inbox)
            try:
                self._loop()
            finally:
                self._show_lines()  # also a failed fit's last words
                self.client.unsubscribe_topic(self.topic)
                self.data.release()
            return self._finish()
        except BaseException as exc:
            if self.state is RunState.FINISHED:  # (nothing raises after it; be sure)
                raise
            cancelled = isinstance(exc, KeyboardInterrupt)
            self._enter(RunState.FAILED, RunFinished(
                run_id=self.run_id, status="cancelled" if cancelled else "failed",
                epochs=position_of(self._newest)[0], message=str(exc)))
            raise

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

    # -- states ------------------------------------------------------------------------
    def _enter(self, to: RunState, *events: Event,
               when: Callable[[], tuple[Event, ...] | None] | None = None) -> bool:
        """The one place the fit changes state: check the move, make it, publish its
        events. ``when`` (for moves another thread may race, such as the inbox's end of
        a recovery) decides under the lock whether to move, and with which events.

        Events are published after the lock is released: a subscriber that waits for
        Dask (whose event loop delivers the ranks' messages to the inbox) must not wait
        for a thread that waits for this lock.
        """
        with self._lock:
            if when is not None:
                found = when()
                if found is None:
                    return False
                events = (*events, *found)
            if to is RunState.FAILED and self.state is RunState.STARTING:
                events = ()  # nothing started: no RunFinished without a RunStarted
            check_transition(self.state, to)
            logger.debug("run %s: %s -> %s", self.run_id, self.state, to)
            self.state = to
            self._recovery = None  # a pending recovery belongs to the state it began in
        for event in events:
            self.bus.publish(event)
        return True

    def _start(self) -> None:
        """STARTING -> RUNNING: check everything, open the store, initialise the net."""
        net = self.net
        check_net(net)
        self.workers.configure(net.device)
        if self.workers.device_type == "cuda":  # before anything is made or sent
            self.workers.check_placement(self.workers.wait(placeable=False)[: self.max_world])
        if self.max_world > 1 and self.workers.in_process():
            # torch.distributed has one process group per process: threads of one
            # process cannot form a world of several ranks
            self.max_world = 1
            self.bus.publish(Notice(level="info", message=(
                "the workers are threads of this process (processes=False): the fit "
                "trains on one of them")))
        self.checkpoints.open(self.workers.in_process)
        if self.resume:
            self._newest = self.checkpoints.load(required=True)
        with devices.on_cpu(net):
            if not getattr(net, "warm_start", False) or not getattr(net, "initialized_", False):
                net.initialize()  # as skorch's fit does; before the probe, so seeds match
            prepare_in_notebook(net, self.X, self.y)  # LoadInitState, ...: callback_prep
            if isinstance(self.data, WorkerData):
                preflight(net, self.X, self.y)
        # skorch's meaning: a fit runs max_epochs (more, under warm_start); a resumed fit
        # continues the saved run up to max_epochs in all
        start_epoch = position_of(self._newest)[0] if self.resume else len(net.history)
        self.max_epochs = net.max_epochs if self.resume else len(net.history) + net.max_epochs
        workers = self.workers.wait()
        data: dict[str, Any] = {"sampling": self.sampling}
        if isinstance(self.data, ShardedData):  # checked, computed: before anything trains
            self.data.prepare(workers[: self.max_world], train_split=net.train_split,
                              seed=self.config.seed, model_bytes=model_bytes(net), net=net)
            with devices.on_cpu(net):
                preflight(net, *self.data.probe())  # after the transformers were fitted
            source = self.data.source
            data.update(n_shards=len(source.shards), data_bytes=source.nbytes,
                        source=source.describe())
        self._enter(RunState.RUNNING, RunStarted(
            run_id=self.run_id, max_epochs=self.max_epochs, batch_size=_batch_size(net),
            n_samples=_n_samples(self.X), world_size=min(len(workers), self.max_world),
            start_epoch=start_epoch, **data,
        ))
        for text in getattr(self.data, "notices", ()):
            self.bus.publish(Notice(level="info", message=text))

    def _finish(self) -> Any:
        """-> FINISHED: the user's net gets the final state, as skorch's fit leaves it."""
        training_state.restore(self.net, self._newest)
        # what the callbacks learned, as skorch's fit leaves them (rank 0's copies)
        callback_state.restore(self.net, (self._newest or {}).get("callbacks"))
        devices.to_user_device(self.net)
        self.checkpoints.drop_default()
        self._enter(RunState.FINISHED, self.report(), RunFinished(
            run_id=self.run_id, status="finished", epochs=len(self.net.history)))
        return self.net

    def _on_alive(self, generation: int, world_size: int) -> None:
        """(The inbox) a round trains: the first sign of life of the round after a
        failure ends the recovery, with its downtime and lost work."""
        def recovered() -> tuple[Event, ...] | None:
            recovery = self._recovery
            if (self.state is not RunState.RECOVERING or recovery is None
                    or generation < recovery.generation):
                return None
            return (recovery.recovered(self.run_id, self._newest, world_size=world_size,
                                       now=time.monotonic()),)

        self._enter(RunState.RUNNING, when=recovered)

    def _on_reached(self, position: Position) -> None:
        """(The inbox) a failed rank got further than the last progress message."""
        with self._lock:
            if self._recovery is not None:
                self._recovery = self._recovery.reached_further(position)

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            workers = self.workers.wait()[: self.max_world]
            if self.state is RunState.RESIZING:  # report the world the resize led to
                assert self._resize is not None
                (old, reason), self._resize = self._resize, None
                self._enter(RunState.RUNNING, Resized(
                    run_id=self.run_id, old=old, new=len(workers),
                    epoch=position_of(self._newest)[0], reason=reason))
            outcome = self._round(workers)
            if outcome.results:  # rank 0's last lines may trail its result
                self.inbox.await_lines(self.generation - 1, outcome.results[0].log_messages)
                self._show_lines()
            if outcome.kind is OutcomeKind.FINISHED:
                self.results = outcome.results
                self._newest = outcome.results[0].state
                return
            if outcome.kind is OutcomeKind.RETRY:  # workers changed while it started
                continue
            if outcome.kind is OutcomeKind.RESIZE:
                self._after_resize(workers, outcome)
            else:
                self._after_failure(outcome)

    def _round(self, workers: list[str]) -> RoundOutcome:
        config, ckpt = self.config, self.ckpt_config
        spec = RankSpec(
            run_id=self.run_id, generation=self.generation, world_size=len(workers),
            net=self.net, max_epochs=self.max_epochs, state=self._newest,
            seed=config.seed, backend=self.workers.backend, topic=self.topic,
            devices=self.workers.devices_of(workers), precision=config.precision,
            data_on_device=config.data_on_device,
            rendezvous_timeout=config.rendezvous_timeout,
            collective_timeout=config.collective_timeout,
            progress_interval=config.progress_interval,
            beacon_interval=config.beacon_interval, host_reduce=config.host_reduce,
            stop_event=f"scalekit-stop-{self.run_id}-g{self.generation}",
            checkpoint=self.checkpoints.store, checkpoint_epochs=ckpt.every_epochs,
            checkpoint_seconds=ckpt.every_seconds, fit_params=self.fit_params,
            strategy=self.strategy, callbacks=self.inbox.round_callbacks(self.cwd),
            run_config=run_config(
                self.net, max_epochs=self.max_epochs, strategy=self.strategy.name,
                config=config, checkpoint=ckpt),
        )
        logger.info("run %s, round %d: %s", self.run_id, self.generation,
                    self.strategy.describe(len(workers)))
        self._current = Round(
            self.client, spec, workers, self.data.futures, beacons=self.inbox.beacons,
            hang_timeout=config.hang_timeout, max_world=self.max_world,
            shrink_to=lambda: self._shrink_to,
            kill=lambda address, where: _kill(self.client, address, where),
            eligible=self.workers.joinable, stall_timeout=config.stall_timeout,
            idle=self._show_lines,
        )
        if self._cancelled:
            self._current.cancelled.set()
        try:
            return self._current.run()
        finally:
            self.generation += 1

    def _show_lines(self) -> None:
        """Hand what rank 0 printed to ``echo``, in this (the fit's) thread."""
        self.inbox.show_lines(self.echo)

    def _after_resize(self, workers: list[str], outcome: RoundOutcome) -> None:
        """RUNNING -> RESIZING: the state moves on in memory; shrink the cluster first
        when a scale-down asked for the stop."""
        self._enter(RunState.RESIZING)
        self._newest = outcome.results[0].state
        shrink, self._shrink_to = self._shrink_to, None
        if shrink is not None and self.scale_to is not None:
            self.scale_to(shrink)
            self.workers.wait_for_count(shrink)
        self._resize = (len(workers), "scale down" if shrink is not None else "workers joined")

    def _after_failure(self, outcome: RoundOutcome) -> None:
        """-> RECOVERING, then restore (the next round starts from the newest state) or
        give up (raise)."""
        failure = outcome.failure
        assert failure is not None
        failed = () if failure.rank is None else (RankStatus(
            run_id=self.run_id, rank=failure.rank, worker=failure.worker or "",
            state="failed", generation=self.generation - 1),)
        self._enter(RunState.RECOVERING, *failed)
        if failure.kind is FailureKind.USER:  # a bug a retry would repeat: nothing to restore
            raise training_error(failure, outcome.error, decide_after_failure(
                failure, failures_so_far=0, max_failures=1, workers_alive=0).reason)
        newest = self.checkpoints.after_failure()
        if newest is not None and newer(newest, self._newest):
            self._newest = newest
        # the budget counts failures in a row: saved progress since the last one resets it
        position = position_of(self._newest)
        failures = self._budget.count(position)
        decision = decide_after_failure(failure, failures_so_far=failures - 1,
                                        max_failures=self.config.max_failures,
                                        workers_alive=len(self.client.nthreads()))
        if decision.action is Action.GIVE_UP:
            raise training_error(failure, outcome.error, decision.reason)
        self._budget.restoring(position)
        self.bus.publish(Notice(level="warning", message=f"recovering: {decision.reason}"))
        with self._lock:
            self._recovery = Recovery(failed_at=outcome.failed_at, reached=self.inbox.progress,
                                      reason=decision.reason, generation=self.generation)


__all__ = ["TrainingController", "check_net", "preflight"]
