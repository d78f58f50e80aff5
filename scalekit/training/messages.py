"""What ranks tell the controller: typed wire messages.

Ranks send these through Dask structured events (``worker.log_event`` on the run's
topic, ``client.subscribe_topic`` in the notebook) as plain JSON-safe dicts
(:meth:`to_dict`); the controller turns them back into objects (:func:`decode`) and
from there into the public events of :mod:`scalekit.events`, which stay the only
vocabulary views see. Every message names the round (``generation``) that sent it.

=================  ====================================  ==============================
message            sent by                               becomes
=================  ====================================  ==============================
:class:`Beat`      every rank, every ``beacon-interval``  liveness (not an event)
:class:`BatchDone`  rank 0, throttled                    ``BatchProgress``
:class:`EpochDone`  rank 0, at each epoch end            ``EpochEnded``
:class:`CheckpointDone`  the rank that committed one     ``CheckpointSaved``
:class:`RankUpdate`  every rank, as its state changes    ``RankStatus``
:class:`DataRead`  every rank (sharded data), throttled  ``ShardProgress``
:class:`LogLines`  rank 0, when its trainer prints       ``LogLine``
=================  ====================================  ==============================
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from scalekit.training.enums import StrEnum


class MessageKind(StrEnum):
    BEAT = "beat"
    BATCH = "batch"
    EPOCH = "epoch"
    CHECKPOINT = "checkpoint"
    RANK = "rank"
    DATA = "data"
    LOG = "log"


class RankPhase(StrEnum):
    """Where a rank is in its round (``RankStatus.state`` carries the value)."""

    RENDEZVOUS = "rendezvous"
    TRAINING = "training"
    DONE = "done"
    FAILED = "failed"  # its own error, or it was lost
    ABORTED = "aborted"  # it stopped because a peer went away (part of that failure)


class Position(NamedTuple):
    """How far a rank got: steps done in ``epoch`` (0-based), of ``n_batches``."""

    epoch: int
    batch: int
    n_batches: int

    @property
    def steps(self) -> int:
        """Steps since the start of the fit (every epoch has ``n_batches``)."""
        return self.epoch * self.n_batches + self.batch


START = Position(0, 0, 1)


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of the wire messages: a ``kind`` and the round that sent it."""

    kind: ClassVar[MessageKind]
    generation: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what travels through Dask)."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Message:
        """The message ``raw`` (from :meth:`to_dict`) describes; ``KeyError``,
        ``ValueError`` or ``TypeError`` when it is malformed."""
        if raw.get("kind") != cls.kind.value:
            raise ValueError(f"not a {cls.kind.value!r} message: {raw.get('kind')!r}")
        return cls(**cls._fields_from(raw))

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"generation": int(raw.get("generation", 0))}


@dataclasses.dataclass(frozen=True)
class Beat(Message):
    """"Alive at step ``step``": where the rank runs and whether it waits for peers."""

    kind: ClassVar[MessageKind] = MessageKind.BEAT
    rank: int
    step: int
    pid: int
    host: str  # hostname and boot id (host_reduce.host_identity)
    waiting: bool = False  # its training thread sits in a collective

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from(raw), "rank": int(raw["rank"]),
                "step": int(raw.get("step", 0)), "pid": int(raw["pid"]),
                "host": str(raw["host"]), "waiting": bool(raw.get("waiting", False))}


@dataclasses.dataclass(frozen=True)
class BatchDone(Message):
    """Rank 0 finished step ``batch`` of ``n_batches`` in ``epoch`` (0-based)."""

    kind: ClassVar[MessageKind] = MessageKind.BATCH
    epoch: int
    batch: int
    n_batches: int
    samples_per_s: float

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.batch, self.n_batches)

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from(raw), "epoch": int(raw["epoch"]),
                "batch": int(raw["batch"]), "n_batches": int(raw["n_batches"]),
                "samples_per_s": float(raw["samples_per_s"])}


@dataclasses.dataclass(frozen=True)
class EpochDone(Message):
    """Rank 0 ended epoch ``epoch`` (1-based, as skorch counts): its history row's
    numbers, and the state of its rank-0 loggers after that epoch (a later round hands
    it back to them: see callback_router)."""

    kind: ClassVar[MessageKind] = MessageKind.EPOCH
    epoch: int
    row: Mapping[str, float | bool]
    world_size: int
    callbacks: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "row": dict(self.row), "callbacks": dict(self.callbacks)}

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from(raw), "epoch": int(raw["epoch"]),
                "row": dict(raw["row"]), "world_size": int(raw["world_size"]),
                "callbacks": dict(raw.get("callbacks") or {})}


@dataclasses.dataclass(frozen=True)
class CheckpointDone(Message):
    """A checkpoint was committed (written and recorded in ``latest.json``)."""

    kind: ClassVar[MessageKind] = MessageKind.CHECKPOINT
    epoch: int
    step: int
    url: str
    seconds: float
    nbytes: int = 0

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from(raw), "epoch": int(raw["epoch"]),
                "step": int(raw["step"]), "url": str(raw["url"]),
                "seconds": float(raw["seconds"]), "nbytes": int(raw.get("nbytes", 0))}


@dataclasses.dataclass(frozen=True)
class RankUpdate(Message):
    """A rank's state changed; a failed rank says how far it got (``reached``): the
    steps a failure cost are counted from there."""

    kind: ClassVar[MessageKind] = MessageKind.RANK
    rank: int
    worker: str
    state: RankPhase
    world_size: int
    reached: Position | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        reached = out.pop("reached")
        if reached is not None:  # flat, as the other messages carry a position
            out.update(Position(*reached)._asdict())
        return out

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        reached = None
        if "batch" in raw:
            reached = Position(int(raw["epoch"]), int(raw["batch"]), int(raw["n_batches"]))
        return {**super()._fields_from(raw), "rank": int(raw["rank"]),
                "worker": str(raw["worker"]), "state": RankPhase(raw["state"]),
                "world_size": int(raw.get("world_size", 0)), "reached": reached}


@dataclasses.dataclass(frozen=True)
class DataRead(Message):
    """How far a rank got through its shards of ``epoch`` (0-based), and what it holds
    in its read buffer."""

    kind: ClassVar[MessageKind] = MessageKind.DATA
    rank: int
    worker: str
    epoch: int
    shards_done: int
    shards_total: int
    rows_done: int
    rows_total: int
    bytes_read: int = 0
    buffered: int = 0
    read_s: float = 0.0

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        ints = ("rank", "epoch", "shards_done", "shards_total", "rows_done", "rows_total",
                "bytes_read", "buffered")
        return {**super()._fields_from(raw), "worker": str(raw["worker"]),
                "read_s": float(raw.get("read_s", 0.0)),
                **{k: int(raw.get(k, 0)) for k in ints}}


@dataclasses.dataclass(frozen=True)
class LogLines(Message):
    """Whole lines rank 0's training thread printed (``PrintLog``'s rows, a callback's
    ``print``): ``stream`` is "stdout" or "stderr"; ``epoch`` the epoch they belong to;
    ``seq`` counts the messages of the round, from 1."""

    kind: ClassVar[MessageKind] = MessageKind.LOG
    rank: int
    stream: str
    text: str
    epoch: int
    seq: int

    @classmethod
    def _fields_from(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from(raw), "rank": int(raw.get("rank", 0)),
                "stream": str(raw.get("stream", "stdout")), "text": str(raw["text"]),
                "epoch": int(raw.get("epoch", 0)), "seq": int(raw.get("seq", 0))}


KINDS: dict[str, type[Message]] = {
    cls.kind.value: cls
    for cls in (Beat, BatchDone, EpochDone, CheckpointDone, RankUpdate, DataRead, LogLines)
}


def decode(raw: Mapping[str, Any]) -> Message | None:
    """The message ``raw`` describes; ``None`` for a kind this version does not know
    (a newer rank's), an error when a known kind is malformed."""
    cls = KINDS.get(raw.get("kind")) if isinstance(raw, Mapping) else None
    return cls.from_dict(raw) if cls is not None else None
