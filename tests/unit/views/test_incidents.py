"""A recovery reads as one failure and one recovery, not one red line per rank."""

from __future__ import annotations

import itertools

import pytest

from scalekit.events import (
    EpochEnded,
    Event,
    Notice,
    RankStatus,
    Recovered,
    RunFinished,
    RunStarted,
)
from scalekit.views.incidents import Incidents
from scalekit.views.lab_text import run_view
from scalekit.views.timeline_render import timeline_lines
from scalekit.views.training_render import rank_chips_html, state_text, status_html
from scalekit.views.training_state import TrainingState

T0 = 2_000.0
NOTICE = "recovering: rank 1 lost on w1; restoring on 2 worker(s)"


def _status(rank: int, state: str, generation: int, at: float) -> RankStatus:
    return RankStatus(run_id="r", rank=rank, worker=f"w{rank}", state=state,
                      generation=generation, time=T0 + at)


def _training(generation: int, ranks: int, at: float) -> list[Event]:
    return [_status(r, "training", generation, at) for r in range(ranks)]


def _killed_worker(order: tuple[int, ...] = (1, 0, 2)) -> list[Event]:
    """Three ranks train; w1 is killed. The controller reports rank 1 failed (and says
    so in its notice), the survivors 0 and 2 report ``failed`` themselves: in whatever
    order the messages arrive."""
    events: list[Event] = [RunStarted(run_id="r", max_epochs=4, batch_size=8, n_samples=80,
                                      world_size=3, time=T0)]
    events += _training(0, 3, 1.0)
    events.append(EpochEnded(run_id="r", epoch=1, row={"train_loss": 1.0}, world_size=3,
                             time=T0 + 2))
    for k, rank in enumerate(order):
        events.append(_status(rank, "failed", 0, 3.0 + k / 10))
        if rank == 1:
            events.append(Notice(level="warning", message=NOTICE, time=T0 + 3.05 + k / 10))
    return events


def _recovered() -> list[Event]:
    return [Recovered(run_id="r", reason="rank 1 lost on w1", epoch=1, step=0, world_size=2,
                      lost_steps=4, downtime_s=0.152, time=T0 + 5),
            *_training(1, 2, 5.0)]


@pytest.mark.parametrize("order", list(itertools.permutations((0, 1, 2))))
def test_one_killed_worker_is_one_failure_whatever_the_order(order: tuple[int, ...]) -> None:
    s = TrainingState.from_events(_killed_worker(order))
    (incident,) = s.incidents.open
    assert incident.cause == 1 and incident.kind == "lost" and incident.followers == [0, 2]
    assert incident.text == "rank 1 on w1 lost (generation 0) · ranks 0, 2 stopped with it"
    failures = [line for line in timeline_lines(s) if " failure " in line]
    assert len(failures) == 1  # one entry, redrawn as more ranks reported


def test_while_recovering_one_red_line_and_survivors_marked_aborted() -> None:
    s = TrainingState.from_events(_killed_worker())
    html = status_html(s)
    assert html.count('class="scalekit-incident"') == 1
    assert "rank 0 on w0 failed" not in html and "rank 2" not in html.split("stopped")[0]
    assert "recovering: rank 1 lost" in html  # the warning holds while it recovers
    chips = rank_chips_html(s)
    assert "rank 1 · failed" in chips
    assert "rank 0 · aborted" in chips and "rank 2 · aborted" in chips
    alerts = run_view(s)["alerts"]
    assert [a["level"] for a in alerts] == ["error", "warning"]


def test_state_clears_when_the_next_round_trains() -> None:
    s = TrainingState.from_events([*_killed_worker(), *_recovered()])
    assert s.incidents.open == [] and s.notice is None
    assert 'class="scalekit-incident"' not in status_html(s)
    assert "recovering" not in status_html(s) and run_view(s)["alerts"] == []
    kinds = [line.split()[1] for line in timeline_lines(s)]
    assert kinds.count("failure") == 1 and kinds.count("recovery") == 1
    text = state_text(s)
    assert "rank 0 on w0 failed" not in text and "recoveries: 1 · downtime 152 ms" in text


def test_the_next_round_training_closes_it_even_before_recovered_arrives() -> None:
    s = TrainingState.from_events([*_killed_worker(), *_training(1, 2, 4.0)])
    assert s.incidents.open == [] and s.notice is None


def test_a_finished_run_shows_no_stale_failure() -> None:
    events = [*_killed_worker(), *_recovered(),
              RunFinished(run_id="r", status="finished", epochs=4, time=T0 + 9)]
    html = status_html(TrainingState.from_events(events))
    assert "failed" not in html and "recovering" not in html and "finished" in html


def test_a_failed_run_keeps_its_failure_on_screen() -> None:
    events = [*_killed_worker(), RunFinished(run_id="r", status="failed", epochs=1,
                                             message="gave up", time=T0 + 9)]
    html = status_html(TrainingState.from_events(events))
    assert html.count('class="scalekit-incident"') == 1 and "failed: gave up" in html


def test_ranks_that_say_aborted_need_no_notice() -> None:
    """The runtime may report a peer-caused stop as ``aborted``: the one ``failed`` rank
    is then the cause, without parsing the controller's notice."""
    incidents = Incidents()
    for rank, state in ((0, "aborted"), (2, "aborted"), (1, "failed")):
        incidents.rank(_status(rank, state, 3, 1.0), (5, 2))
    (incident,) = incidents.open
    assert incident.cause == 1 and incident.kind == "failed"
    assert incident.text == "rank 1 on w1 failed (generation 3) · ranks 0, 2 stopped with it"
    assert (incident.epoch, incident.step) == (5, 2)
    # a late "aborted" does not overwrite the controller's "failed" for the same rank
    incidents.rank(_status(1, "aborted", 3, 2.0), (5, 2))
    assert incidents.open[0].cause == 1


def test_without_a_notice_several_failed_ranks_are_one_incident_of_unknown_cause() -> None:
    incidents = Incidents()
    for rank in (0, 1):
        incidents.rank(_status(rank, "failed", 2, 1.0), (1, 0))
    (incident,) = incidents.open
    assert incident.cause is None and incident.text == "ranks 0, 1 stopped (generation 2)"
    assert incident.state_of(0) == incident.state_of(1) == "failed"
