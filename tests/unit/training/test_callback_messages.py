"""Rank 0's printed lines and its loggers' state travel as typed messages; the inbox turns
them into LogLine events, queues the lines for the fit's thread and remembers what later
rounds need (scalekit.training.messages, .inbox; scalekit.fitting prints them)."""

from __future__ import annotations

import threading
import time
import types

from scalekit.events import EventBus, LogLine
from scalekit.fitting import TrainingRun, _print_line
from scalekit.training.inbox import Inbox
from scalekit.training.messages import EpochDone, LogLines, RankPhase, RankUpdate, decode
from scalekit.training.rounds import Beacons


def test_log_lines_and_the_loggers_state_round_trip():
    lines = LogLines(generation=2, rank=0, stream="stdout", text="a\nb", epoch=3, seq=1)
    assert decode(lines.to_dict()) == lines
    done = EpochDone(generation=1, epoch=4, row={"train_loss": 0.5}, world_size=2,
                     callbacks={"log": {"attrs": {"first_iteration_": False}}})
    assert decode(done.to_dict()) == done
    old = {k: v for k, v in done.to_dict().items() if k != "callbacks"}  # an older rank's
    assert decode(old).callbacks == {}


def inbox():
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    return Inbox("r1", bus, Beacons()), events


def test_the_inbox_publishes_lines_and_queues_them_for_the_fits_thread():
    box, events = inbox()
    box.handle(LogLines(generation=0, rank=0, stream="stdout", text="  epoch", epoch=0, seq=1))
    box.handle(LogLines(generation=0, rank=0, stream="stderr", text="careful", epoch=1, seq=2))
    logged = [e for e in events if isinstance(e, LogLine)]
    assert [(e.text, e.stream, e.epoch) for e in logged] == [
        ("  epoch", "stdout", 0), ("careful", "stderr", 1)]
    shown = []
    box.show_lines(lambda stream, text: shown.append((stream, text)))
    assert shown == [("stdout", "  epoch"), ("stderr", "careful")]
    box.show_lines(lambda stream, text: shown.append("again"))
    assert len(shown) == 2  # each line once
    assert box.log_messages == {0: 2}


def test_the_inbox_waits_for_lines_that_trail_a_result():
    box, _ = inbox()

    def late():
        time.sleep(0.2)
        box.handle(LogLines(generation=3, rank=0, stream="stdout", text="last", epoch=5,
                            seq=1))

    threading.Thread(target=late).start()
    box.await_lines(3, 1, timeout=10)
    assert box.log_messages[3] == 1
    started = time.monotonic()
    box.await_lines(3, 2, timeout=0.1)  # one that never comes: bounded
    assert time.monotonic() - started < 5


def test_what_the_next_round_learns_about_the_callbacks():
    box, _ = inbox()
    assert box.round_callbacks("/nb").begun is False
    box.handle(RankUpdate(generation=0, rank=0, worker="w", state=RankPhase.TRAINING,
                          world_size=2))
    for epoch, seen in ((1, 10), (2, 20), (1, 99)):  # the last: epoch 1 redone
        box.handle(EpochDone(generation=0, epoch=epoch, row={}, world_size=2,
                             callbacks={"ml": {"attrs": {"_batch_count": seen}}}))
    plan = box.round_callbacks("/nb")
    assert (plan.begun, plan.reported, plan.cwd) == (True, 2, "/nb")
    assert plan.logger_states == {"ml": {"attrs": {"_batch_count": 20}}}


def test_a_foreground_fit_prints_the_lines_and_the_run_keeps_them(capsys):
    _print_line("stdout", "  epoch  train_loss\n      1  0.5")
    _print_line("stderr", "a warning")
    out, err = capsys.readouterr()
    assert out == "  epoch  train_loss\n      1  0.5\n" and err == "a warning\n"
    bus = EventBus()
    controller = types.SimpleNamespace(run_id="r1", net=None)
    run = TrainingRun(controller, bus=bus)
    bus.publish(LogLine(run_id="r1", text="row 1\nrow 2"))
    bus.publish(LogLine(run_id="other", text="not ours"))
    assert run.log == ["row 1", "row 2"]
