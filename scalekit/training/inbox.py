"""The controller's side of the conversation: rank messages in (:mod:`.messages`),
liveness beats, progress and public events out.

The inbox only translates; what a message means for the fit (a recovery ends, a failed
round got further than its last progress message) it hands to the controller through
two callbacks, ``on_alive`` and ``on_reached``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from scalekit.events import (
    BatchProgress,
    CheckpointSaved,
    EpochEnded,
    EventBus,
    LogLine,
    RankStatus,
    ShardProgress,
)
from scalekit.training.callback_router import RoundCallbacks
from scalekit.training.messages import (
    START,
    BatchDone,
    Beat,
    CheckpointDone,
    DataRead,
    EpochDone,
    LogLines,
    Message,
    Position,
    RankPhase,
    RankUpdate,
    decode,
)
from scalekit.training.rounds import Beacons

logger = logging.getLogger(__name__)

LINES_S = 5.0  # how long a finished round's printed lines may trail its result


class Inbox:
    """Handles the messages of one fit's ranks (a ``client.subscribe_topic`` handler;
    it runs on the client's event loop, beside the controller's own thread).

    Parameters
    ----------
    run_id : str
    bus : EventBus
        Where the public events go.
    beacons : Beacons
        Where liveness beats go.
    on_alive : callable(generation, world_size)
        A round shows it trains: its rank 0 started training, or progress arrived.
    on_reached : callable(Position)
        A failed rank reported a position further than the last progress message.

    Attributes
    ----------
    progress : Position
        The furthest position the ranks are known to have reached.
    progress_generation : int
        The round that sent the last progress message.
    lines : queue.SimpleQueue of (stream, text)
        What rank 0 printed, in order, for the controller to show where the fit runs.
    """

    def __init__(self, run_id: str, bus: EventBus, beacons: Beacons, *,
                 on_alive: Callable[[int, int], None] = lambda generation, world: None,
                 on_reached: Callable[[Position], None] = lambda position: None) -> None:
        self.run_id = run_id
        self.bus = bus
        self.beacons = beacons
        self.on_alive = on_alive
        self.on_reached = on_reached
        self.progress = START
        self.progress_generation = 0
        self.lines: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.log_messages: dict[int, int] = {}  # generation -> LogLines received
        # what later rounds need to know about the callbacks (see callback_router)
        self.began = False  # a rank 0 started training: its callbacks saw on_train_begin
        self.reported = 0  # the last epoch rank 0 reported
        self.logger_states: dict[str, Any] = {}  # its loggers' state after that epoch

    def __call__(self, event: tuple[float, Any]) -> None:
        _, raw = event
        try:
            message = decode(raw)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring a malformed message from a rank (%s: %s): %r",
                           type(exc).__name__, exc, raw)
            return
        if message is not None:  # None: a kind this version does not know
            self.handle(message)

    def handle(self, message: Message) -> None:
        run_id = self.run_id
        match message:
            case Beat():
                self.beacons.beat(message.generation, message.rank, message.host,
                                  message.pid, step=message.step, waiting=message.waiting)
            case BatchDone():
                self.on_alive(message.generation, 0)
                self.progress = message.position
                self.progress_generation = message.generation
                self.bus.publish(BatchProgress(
                    run_id=run_id, epoch=message.epoch, batch=message.batch,
                    n_batches=message.n_batches, samples_per_s=message.samples_per_s))
            case EpochDone():
                self.on_alive(message.generation, message.world_size)
                if message.epoch >= self.reported:
                    self.reported = message.epoch
                    self.logger_states = dict(message.callbacks)
                self.bus.publish(EpochEnded(run_id=run_id, epoch=message.epoch,
                                            row=dict(message.row),
                                            world_size=message.world_size))
            case CheckpointDone():
                self.bus.publish(CheckpointSaved(
                    run_id=run_id, epoch=message.epoch, step=message.step, url=message.url,
                    seconds=message.seconds, nbytes=message.nbytes))
            case DataRead():
                self.bus.publish(ShardProgress(
                    run_id=run_id, rank=message.rank, worker=message.worker,
                    epoch=message.epoch, shards_done=message.shards_done,
                    shards_total=message.shards_total, rows_done=message.rows_done,
                    rows_total=message.rows_total, bytes_read=message.bytes_read,
                    buffered=message.buffered, read_s=message.read_s,
                    generation=message.generation))
            case RankUpdate():
                self.bus.publish(RankStatus(run_id=run_id, rank=message.rank,
                                            worker=message.worker, state=message.state.value,
                                            generation=message.generation))
                if message.state is RankPhase.TRAINING and message.rank == 0:
                    self.began = True
                    self.on_alive(message.generation, message.world_size)
                elif (message.state in (RankPhase.FAILED, RankPhase.ABORTED)
                      and message.reached is not None
                      and message.generation >= self.progress_generation):
                    self._reached(message.reached)

            case LogLines():
                self.log_messages[message.generation] = \
                    self.log_messages.get(message.generation, 0) + 1
                self.lines.put((message.stream, message.text))
                self.bus.publish(LogLine(run_id=run_id, text=message.text,
                                         stream=message.stream, epoch=message.epoch,
                                         rank=message.rank))

    def show_lines(self, echo: Callable[[str, str], None] | None) -> None:
        """Hand the printed lines received so far to ``echo`` (in the caller's thread:
        the notebook's cell belongs to the thread that runs the fit)."""
        while True:
            try:
                stream, text = self.lines.get_nowait()
            except queue.Empty:
                return
            if echo is not None:
                echo(stream, text)

    def await_lines(self, generation: int, sent: int, timeout: float = LINES_S) -> None:
        """Wait (a little) until the ``sent`` printed-lines messages of round
        ``generation`` arrived: they travel apart from rank 0's result."""
        deadline = time.monotonic() + timeout
        while self.log_messages.get(generation, 0) < sent and time.monotonic() < deadline:
            time.sleep(0.01)

    def round_callbacks(self, cwd: str) -> RoundCallbacks:
        """What the next round's ranks need to know about the callbacks so far."""
        return RoundCallbacks(begun=self.began, reported=self.reported,
                              logger_states=dict(self.logger_states), cwd=cwd)

    def _reached(self, position: Position) -> None:
        """A failed rank said how far it got: the work lost is counted from there if
        that is past the last (throttled) progress message."""
        if position.steps > self.progress.steps:
            self.progress = position
        self.on_reached(position)
