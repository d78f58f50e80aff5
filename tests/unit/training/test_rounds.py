"""Pieces of one round (scalekit.training.rounds, .worker_ops) that need no cluster:
ending a hung worker, and the beacons' record of who waits for whom."""

from __future__ import annotations

import subprocess
import sys
import time

from scalekit.training.host_reduce import host_identity
from scalekit.training.rounds import Beacons
from scalekit.training.worker_ops import kill_local_or_restart


class Client:
    def __init__(self):
        self.restarted = []

    def restart_workers(self, workers, raise_for_error=True):
        self.restarted.extend(workers)


def sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_hung_worker_on_this_host_is_killed():
    proc = sleeper()
    client = Client()
    try:
        kill_local_or_restart(client, "tcp://w:1", (host_identity(), proc.pid))
        assert proc.wait(timeout=10) == -9
        assert client.restarted == []
    finally:
        proc.kill()


def test_a_same_named_host_with_another_boot_id_is_never_sent_a_local_kill():
    """A cloned VM or container shares the hostname, not the boot id: the PID belongs
    to another machine, so its nanny restarts it instead."""
    import socket

    proc = sleeper()
    client = Client()
    try:
        kill_local_or_restart(client, "tcp://w:1", (f"{socket.gethostname()}/other-boot",
                                                    proc.pid))
        time.sleep(0.2)
        assert proc.poll() is None  # still alive
        assert client.restarted == ["tcp://w:1"]
    finally:
        proc.kill()
        proc.wait()


def test_beacons_track_steps_and_waiting_per_generation():
    beacons = Beacons()
    beacons.reset(3)
    beacons.beat(3, 0, "h", 1, step=5, waiting=True)
    beacons.beat(3, 1, "h", 2, step=5, waiting=False)
    beacons.beat(2, 1, "h", 2, step=99)  # an older round's beat: ignored
    assert beacons.progress[1][0] == 5 and beacons.waiting == {0: True, 1: False}
    first = beacons.progress[0][1]
    beacons.beat(3, 0, "h", 1, step=5, waiting=True)
    assert beacons.progress[0][1] == first  # the same step: still since then
    assert beacons.stalled(timeout=60.0) == []
    beacons.progress = {r: (s, since - 61.0) for r, (s, since) in beacons.progress.items()}
    assert beacons.stalled(timeout=60.0) == [1]
    beacons.reset(4)
    assert beacons.progress == {} and beacons.waiting == {}


# -- a worker leaves while a round is set up --------------------------------------------


class SetUpClient:
    """What a round sees of a scheduler whose worker left (or stopped) during the
    scatter."""

    def __init__(self, alive, error, last_seen=None):
        self.alive, self.error = alive, error
        self.last_seen = last_seen or {w: 100.0 for w in alive}
        self.timeouts = []

    def scatter(self, *args, **kwargs):
        raise self.error

    def nthreads(self):
        return {w: 1 for w in self.alive}

    def scheduler_info(self, n_workers=5):
        return {"workers": {w: {"last_seen": t} for w, t in self.last_seen.items()}}


def a_round(client, killed=None):
    from scalekit.training.rank import RankSpec
    from scalekit.training.rounds import Round

    spec = RankSpec(run_id="r", generation=0, world_size=2, net=None, max_epochs=1,
                    stop_event="scalekit-stop-r-g0")
    return Round(client, spec, ["tcp://a:1", "tcp://b:1"], lambda: [None, None],
                 beacons=Beacons(), hang_timeout=5.0, max_world=8, shrink_to=lambda: None,
                 kill=lambda address, where: (killed if killed is not None else []).append(
                     address))


def test_a_worker_gone_during_set_up_means_start_again_not_fail():
    """The soak's 1-in-4 failure: the scheduler raised KeyError('tcp://...') from
    scatter(workers=...) for a worker killed a moment before; that is a change of
    membership, not the fit's error."""
    client = SetUpClient(alive=["tcp://a:1"], error=KeyError("tcp://b:1"))
    outcome = a_round(client).run()
    assert outcome.kind == "retry" and isinstance(outcome.error, KeyError)


def test_a_set_up_error_with_every_worker_still_there_is_raised(monkeypatch):
    import pytest

    from scalekit.training import rounds

    monkeypatch.setattr(rounds, "GONE_S", 0.2)
    client = SetUpClient(alive=["tcp://a:1", "tcp://b:1"], error=TypeError("cannot pickle"))
    round_ = a_round(client)
    with pytest.raises(TypeError, match="cannot pickle"):
        round_.run()


def test_a_worker_stopped_before_the_round_is_ended_and_the_round_starts_again():
    """SIGSTOP of a worker between rounds: the scatter to it would wait for good (the
    soak found the fit stuck there). It is bounded, the silent worker (no heartbeat for
    longer than two hang timeouts) is ended, and the round starts again."""
    killed = []
    client = SetUpClient(alive=["tcp://a:1", "tcp://b:1"], error=TimeoutError("scatter"),
                         last_seen={"tcp://a:1": 100.0, "tcp://b:1": 85.0})
    outcome = a_round(client, killed).run()
    assert outcome.kind == "retry"
    assert killed == ["tcp://b:1"]


def test_bounded_calls_end_in_time():
    import threading

    import pytest

    from scalekit.training.worker_ops import bounded

    assert bounded(lambda: 7, 1.0, "quick") == 7
    with pytest.raises(KeyError):
        bounded(lambda: {}["x"], 1.0, "failing")
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stuck did not finish within 0.2s"):
        bounded(release.wait, 0.2, "stuck")  # like a scatter to a stopped worker
    assert time.monotonic() - started < 5
    release.set()


def test_the_notebook_never_kills_itself_for_an_in_process_worker():
    import os

    client = Client()
    kill_local_or_restart(client, "tcp://w:1", (host_identity(), os.getpid()))
    assert client.restarted == ["tcp://w:1"]  # (and this test is still running)
