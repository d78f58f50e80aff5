"""The typed wire messages between ranks and the controller (scalekit.training.messages):
JSON-safe round trips, the wire's shape, and what the inbox does with odd ones."""

from __future__ import annotations

import json

import pytest

from scalekit.events import EventBus
from scalekit.training.inbox import Inbox
from scalekit.training.messages import (
    KINDS,
    START,
    BatchDone,
    Beat,
    CheckpointDone,
    EpochDone,
    MessageKind,
    Position,
    RankPhase,
    RankUpdate,
    decode,
)
from scalekit.training.rounds import Beacons

MESSAGES = [
    Beat(generation=3, rank=1, step=120, pid=4242, host="node-1/boot-id", waiting=True),
    BatchDone(generation=0, epoch=2, batch=17, n_batches=85, samples_per_s=51234.5),
    EpochDone(generation=1, epoch=3, row={"train_loss": 0.25, "valid_acc": 0.9,
                                          "event_cp": True}, world_size=2),
    CheckpointDone(generation=2, epoch=4, step=120, url="s3://b/run/ckpt-000004-00000120.pt",
                   seconds=0.031, nbytes=723301),
    RankUpdate(generation=0, rank=0, worker="tcp://10.0.0.1:3456", state=RankPhase.TRAINING,
               world_size=2),
    RankUpdate(generation=5, rank=1, worker="tcp://10.0.0.2:3456", state=RankPhase.FAILED,
               world_size=3, reached=Position(epoch=2, batch=5, n_batches=9)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_json_and_comes_back_equal(message):
    wire = json.loads(json.dumps(message.to_dict()))  # JSON-safe: no enums, no tuples left
    assert wire["kind"] == message.kind.value and wire["generation"] == message.generation
    again = decode(wire)
    assert again == message and type(again) is type(message)
    assert type(message).from_dict(wire) == message


def test_the_wire_stays_flat_and_plain():
    failed = MESSAGES[-1].to_dict()
    assert failed == {"kind": "rank", "generation": 5, "rank": 1, "worker": "tcp://10.0.0.2:3456",
                      "state": "failed", "world_size": 3, "epoch": 2, "batch": 5,
                      "n_batches": 9}
    assert "epoch" not in MESSAGES[-2].to_dict()  # no position: none sent
    assert set(KINDS) == {k.value for k in MessageKind}


def test_a_message_without_a_generation_is_of_round_zero():
    assert decode({"kind": "batch", "epoch": 0, "batch": 1, "n_batches": 2,
                   "samples_per_s": 1.0}).generation == 0


def test_unknown_kinds_are_none_and_malformed_known_kinds_are_errors():
    assert decode({"kind": "telemetry", "gpu": 1}) is None  # a newer rank's: ignored
    assert decode({"no": "kind"}) is None
    with pytest.raises(KeyError):
        decode({"kind": "beat", "rank": 0})
    with pytest.raises(ValueError):
        decode({"kind": "rank", "rank": 0, "worker": "w", "state": "dancing",
                "world_size": 1})
    with pytest.raises(ValueError, match="not a 'beat' message"):
        Beat.from_dict(MESSAGES[1].to_dict())


def test_positions_count_steps_from_the_start_of_the_fit():
    assert Position(2, 5, 9).steps == 23 and START.steps == 0
    assert MESSAGES[1].position == Position(2, 17, 85)


def test_the_inbox_ignores_odd_messages_and_feeds_beats_to_the_beacons(caplog):
    beacons = Beacons()
    beacons.reset(3)
    events = []
    bus = EventBus()
    bus.subscribe(events.append, replay=False)
    alive = []
    inbox = Inbox("r", bus, beacons, on_alive=lambda g, w: alive.append((g, w)))
    inbox((0.0, {"kind": "epoch", "epoch": 1}))  # malformed
    inbox((0.0, {"kind": "telemetry"}))  # unknown
    inbox((0.0, MESSAGES[0].to_dict()))  # a beat
    assert events == [] and alive == []
    assert "ignoring a malformed message" in caplog.text
    assert beacons.where[1] == ("node-1/boot-id", 4242) and beacons.waiting[1] is True
    inbox((0.0, MESSAGES[4].to_dict()))  # rank 0 trains: a sign of life
    inbox((0.0, MESSAGES[2].to_dict()))  # an epoch ended: another
    assert alive == [(0, 2), (1, 2)]


def test_the_inbox_keeps_the_furthest_position_a_failed_rank_reported():
    reached = []
    inbox = Inbox("r", EventBus(), Beacons(), on_reached=reached.append)
    inbox.handle(BatchDone(generation=1, epoch=2, batch=1, n_batches=9, samples_per_s=1.0))
    inbox.handle(RankUpdate(generation=0, rank=1, worker="w", state=RankPhase.FAILED,
                            world_size=2, reached=Position(3, 0, 9)))  # older round: ignored
    assert inbox.progress == Position(2, 1, 9) and reached == []
    inbox.handle(RankUpdate(generation=1, rank=1, worker="w", state=RankPhase.FAILED,
                            world_size=2, reached=Position(2, 4, 9)))
    assert inbox.progress == Position(2, 4, 9) and reached == [Position(2, 4, 9)]
