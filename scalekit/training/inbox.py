"""The controller's side of the conversation: rank messages in (:mod:`.messages`),
liveness beats, progress and public events out.

The inbox only translates; what a message means for the fit (a recovery ends, a failed
round got further than its last progress message) it hands to the controller through
two callbacks, ``on_alive`` and ``on_reached``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scalekit.events import BatchProgress, CheckpointSaved, EpochEnded, EventBus, RankStatus
from scalekit.training.messages import (
    START,
    BatchDone,
    Beat,
    CheckpointDone,
    EpochDone,
    Message,
    Position,
    RankPhase,
    RankUpdate,
    decode,
)
from scalekit.training.rounds import Beacons

logger = logging.getLogger(__name__)


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
                self.bus.publish(EpochEnded(run_id=run_id, epoch=message.epoch,
                                            row=dict(message.row),
                                            world_size=message.world_size))
            case CheckpointDone():
                self.bus.publish(CheckpointSaved(
                    run_id=run_id, epoch=message.epoch, step=message.step, url=message.url,
                    seconds=message.seconds, nbytes=message.nbytes))
            case RankUpdate():
                self.bus.publish(RankStatus(run_id=run_id, rank=message.rank,
                                            worker=message.worker, state=message.state.value,
                                            generation=message.generation))
                if message.state is RankPhase.TRAINING and message.rank == 0:
                    self.on_alive(message.generation, message.world_size)
                elif (message.state in (RankPhase.FAILED, RankPhase.ABORTED)
                      and message.reached is not None
                      and message.generation >= self.progress_generation):
                    self._reached(message.reached)

    def _reached(self, position: Position) -> None:
        """A failed rank said how far it got: the work lost is counted from there if
        that is past the last (throttled) progress message."""
        if position.steps > self.progress.steps:
            self.progress = position
        self.on_reached(position)
