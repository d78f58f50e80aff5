"""The rank's side of the conversation: progress, state changes, checkpoints and the
liveness beacon, sent to the notebook as typed messages (:mod:`.messages`) through
Dask structured events."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from scalekit.training.messages import (
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
)

if TYPE_CHECKING:
    from scalekit.training.checkpoint import CheckpointInfo
    from scalekit.training.dist_net import RankContext
    from scalekit.training.rank import RankSpec


class Publisher:
    """Sends one rank's messages on the run's topic (rank 0 speaks for the world's
    progress; every rank beats and reports its state)."""

    def __init__(self, worker: Any, spec: RankSpec, rank: int) -> None:
        self.worker = worker
        self.spec = spec
        self.rank = rank
        self.position: Position | None = None  # the last step done
        self.peak_rss = 0
        self._last_batch = 0.0
        self._epoch = -1  # the epoch the rate below is measured in
        self._epoch_started = time.perf_counter()
        self._epoch_samples = 0
        self._beacon_stop: threading.Event | None = None
        self.log_messages = 0  # LogLines sent this round

    def send(self, message: Message) -> None:
        if self.spec.topic:
            self.worker.log_event(self.spec.topic, message.to_dict())

    def rank_state(self, state: RankPhase, reached: Position | None = None) -> None:
        self.send(RankUpdate(generation=self.spec.generation, rank=self.rank,
                             worker=self.worker.address, state=state,
                             world_size=self.spec.world_size, reached=reached))

    def batch(self, epoch: int, batch: int, n_batches: int, samples: int) -> None:
        self.position = Position(epoch, batch, n_batches)
        if self.rank != 0:
            return  # rank 0 speaks for the synchronous world
        now = time.perf_counter()
        if batch == 1 or self._epoch != epoch:  # a new epoch, or one resumed mid-way
            self._epoch, self._epoch_started, self._epoch_samples = epoch, now, samples
        if now - self._last_batch < self.spec.progress_interval and batch != n_batches:
            return
        self._last_batch = now
        # over the steps since the epoch's first one here (0 while there are none: a
        # rate over no time is no rate; the views compute their own from the positions)
        elapsed = now - self._epoch_started
        done = samples - self._epoch_samples
        rate = done / elapsed if elapsed > 1e-3 and done > 0 else 0.0
        self.send(BatchDone(generation=self.spec.generation, epoch=epoch, batch=batch,
                            n_batches=n_batches, samples_per_s=rate))

    def epoch(self, epoch: int, row: dict[str, Any],
              callbacks: dict[str, Any] | None = None) -> None:
        self.send(EpochDone(generation=self.spec.generation, epoch=epoch, row=row,
                            world_size=self.spec.world_size, callbacks=callbacks or {}))

    def log(self, stream: str, text: str) -> None:
        """Lines the training thread printed (see rank_output), for the notebook."""
        self.log_messages += 1
        epoch = self.position.epoch + 1 if self.position is not None else 0
        self.send(LogLines(generation=self.spec.generation, rank=self.rank, stream=stream,
                           text=text, epoch=epoch, seq=self.log_messages))

    def data(self, progress: Any) -> None:
        """This rank's progress through its shards (a ``stream.StreamProgress``)."""
        self.send(DataRead(generation=self.spec.generation, rank=self.rank,
                           worker=self.worker.address, epoch=progress.epoch,
                           shards_done=progress.shards_done,
                           shards_total=progress.shards_total, rows_done=progress.rows_done,
                           rows_total=progress.rows_total, bytes_read=progress.bytes_read,
                           buffered=progress.buffered, read_s=round(progress.read_s, 4)))

    def checkpoint(self, info: CheckpointInfo) -> None:
        self.send(CheckpointDone(generation=self.spec.generation, epoch=info.epoch,
                                 step=info.step, url=info.url, seconds=info.seconds,
                                 nbytes=info.nbytes))

    # The liveness beacon: a thread that says "alive at step n" every second. A stopped
    # or dead process falls silent, which the controller notices within seconds --
    # gloo alone would wait for the collective timeout.
    def start_beacon(self, ctx: RankContext) -> None:
        """Start beating; call it from the rank's training thread (it is the one whose
        stack tells whether the rank waits for its peers)."""
        import sys

        from scalekit.training.host_reduce import host_identity

        stop = self._beacon_stop = threading.Event()
        host, pid = host_identity(), os.getpid()
        trainer = threading.get_ident()

        def beat(step: int, waiting: bool) -> Beat:
            return Beat(generation=self.spec.generation, rank=self.rank, step=step, pid=pid,
                        host=host, waiting=waiting)

        def beats() -> None:
            while not stop.wait(self.spec.beacon_interval):
                self.sample_rss()
                frame = sys._current_frames().get(trainer)
                self.send(beat(ctx.step, waits_for_peers(frame)))

        self.send(beat(0, False))
        threading.Thread(target=beats, name="scalekit-beacon", daemon=True).start()

    def stop_beacon(self) -> None:
        if self._beacon_stop is not None:
            self._beacon_stop.set()

    def sample_rss(self) -> int:
        import psutil

        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        return self.peak_rss


# Where a training thread blocks when it waits for its peers: torch.distributed's
# collectives, the autograd engine (DDP's all-reduce completes inside backward), and the
# shared-memory reducer.
_WAITING_IN = (os.sep + os.path.join("torch", "distributed") + os.sep,
               os.sep + os.path.join("torch", "autograd") + os.sep,
               os.sep + os.path.join("scalekit", "training", "host_reduce.py"))


def waits_for_peers(frame: Any) -> bool:
    """Whether a thread whose innermost Python frame is ``frame`` is waiting in a
    collective (as opposed to running model, data or callback code)."""
    if frame is None:
        return False
    name = frame.f_code.co_filename
    return any(part in name for part in _WAITING_IN)
