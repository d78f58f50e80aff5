"""``sk.callbacks.PauseAt``: where it holds, that it holds once, and how the notebook and
the ranks meet through the Dask scheduler.

The Dask side is a real in-process cluster (worker threads, the ``inproc`` transport: no
process, no network). The callback's hooks run inside tasks on its workers, as they do
on a rank; which rank of which world a task plays is set per task (``as_rank``), since
these threads form no ``torch.distributed`` group.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from skorch.history import History

import scalekit as sk
import scalekit.session_registry as registry
from scalekit import callbacks
from scalekit.callbacks import PauseAt, Paused
from scalekit.errors import ConfigError, UsageError

HELD_S = 0.6  # how long a test keeps ranks held before it looks at them


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(autouse=True)
def ranks_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # the rank a task plays (set by as_rank in that task's thread); 0 of 1 by default
    monkeypatch.setattr(callbacks, "rank_and_world",
                        lambda: (getattr(_ROLE, "rank", 0), getattr(_ROLE, "world", 1)))


_ROLE = threading.local()


def net_at(epoch: int, steps: int) -> Any:
    """A stand-in for a skorch net in epoch ``epoch`` after ``steps`` training steps."""
    history = History()
    for e in range(1, epoch + 1):
        history.new_epoch()
        history.record("epoch", e)
    for _ in range(steps):
        history.new_batch()
    return SimpleNamespace(history=history)


def reach(pause: PauseAt, hook: str, epoch: int, steps: int, rank: int = 0, world: int = 1,
          training: bool = True) -> float:
    """Run on a worker: call ``pause``'s ``hook`` as rank ``rank`` of ``world`` at
    ``epoch`` after ``steps`` steps; return how long it held there."""
    _ROLE.rank, _ROLE.world = rank, world
    net = net_at(epoch, steps)
    started = time.monotonic()
    if hook == "on_batch_end":
        pause.on_batch_end(net, training=training)
    else:
        getattr(pause, hook)(net)
    return time.monotonic() - started


def submit(client: Any, pause: PauseAt, hook: str, epoch: int, steps: int, rank: int = 0,
           world: int = 1, worker: str | None = None, **kw: Any) -> Any:
    return client.submit(reach, pause, hook, epoch, steps, rank, world, pure=False,
                         workers=[worker] if worker else None, **kw)


def workers(client: Any) -> list[str]:
    return sorted(client.nthreads())


# -- the pause point --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"epoch": 0}, "PauseAt.epoch"),
    ({"epoch": "3"}, "PauseAt.epoch"),
    ({"epoch": True}, "PauseAt.epoch"),
    ({"batch": -1}, "PauseAt.batch"),
    ({"batch": 2.0}, "PauseAt.batch"),
    ({"world_size": 0}, "PauseAt.world_size"),
    ({"timeout": 0}, "PauseAt.timeout"),
    ({"timeout": True}, "PauseAt.timeout"),
    ({"name": " "}, "PauseAt.name"),
])
def test_bad_arguments_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        PauseAt(**kwargs)
    assert err.value.field == field and isinstance(err.value, ValueError)


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"epoch": 3, "batch": 20}, "after step 20 of epoch 3"),
    ({"epoch": 2}, "at the end of epoch 2"),
    ({"epoch": 3, "batch": 0}, "at the start of epoch 3"),
    ({"batch": 20, "world_size": 3}, "after step 20 of the first epoch with 3 ranks"),
    ({"epoch": 6, "batch": 20, "world_size": 3},
     "after step 20 of the first epoch from 6 on with 3 ranks"),
])
def test_it_says_where_it_holds(kwargs: dict[str, Any], text: str) -> None:
    assert PauseAt(**kwargs).where() == text


def test_copies_are_the_same_pause() -> None:
    # the ranks get pickled copies, sklearn's clone rebuilds from get_params
    from sklearn.base import clone

    pause = PauseAt(epoch=3, batch=20, world_size=2, timeout=5.0)
    for copy in (pickle.loads(pickle.dumps(pause)), clone(pause)):
        assert copy.name == pause.name
        assert copy.get_params() == pause.get_params() == {
            "epoch": 3, "batch": 20, "world_size": 2, "timeout": 5.0, "name": pause.name}
    assert PauseAt().name != PauseAt().name  # a fresh one is another pause
    assert PauseAt(name="grow").name == "grow"


def test_sk_exports_the_callbacks_module_and_the_current_session() -> None:
    assert sk.callbacks.PauseAt is PauseAt
    assert sk.current_session is registry.current_session
    assert {"callbacks", "current_session"} <= set(dir(sk))


# -- holding on the ranks ---------------------------------------------------------------


def test_every_rank_holds_after_the_chosen_step_until_released(client: Any) -> None:
    pause = PauseAt(epoch=3, batch=20)
    addresses = workers(client)
    held = [submit(client, pause, "on_batch_end", 3, 20, rank=r, world=2, worker=addresses[r])
            for r in range(2)]
    found = pause.wait_until_paused(timeout=30, client=client)
    assert found == Paused(epoch=3, batch=20, world_size=2, workers=tuple(addresses))
    time.sleep(HELD_S)
    assert not any(f.done() for f in held)  # still waiting
    assert pause.is_paused(client=client)
    pause.release(client=client)
    seconds = client.gather(held, errors="raise")
    assert all(s >= HELD_S for s in seconds)
    assert not pause.is_paused(client=client)


@pytest.mark.parametrize(("hook", "epoch", "steps", "world", "training"), [
    ("on_batch_end", 3, 19, 2, True),  # a step before
    ("on_batch_end", 3, 21, 2, True),  # a step after (it is past: no later hold this epoch)
    ("on_batch_end", 3, 20, 2, False),  # a validation batch
    ("on_batch_end", 2, 20, 2, True),  # an epoch before
    ("on_epoch_end", 3, 85, 2, True),  # the end of the epoch, not a step
    ("on_batch_end", 3, 20, 3, True),  # another world size
])
def test_other_points_pass_at_once(client: Any, hook: str, epoch: int, steps: int,
                                   world: int, training: bool) -> None:
    pause = PauseAt(epoch=3, batch=20, world_size=2)
    seconds = client.submit(reach, pause, hook, epoch, steps, 0, world, training,
                            pure=False).result(timeout=30)
    assert seconds < HELD_S
    with pytest.raises(TimeoutError, match="after step 20"):
        pause.wait_until_paused(timeout=0.2, client=client)


def test_a_fit_resumed_past_the_epoch_holds_at_its_first_chance(client: Any) -> None:
    pause = PauseAt(epoch=3, batch=5)
    held = submit(client, pause, "on_batch_end", 7, 5)
    assert pause.wait_until_paused(timeout=30, client=client).epoch == 7
    pause.release(client=client)
    assert held.result(timeout=30) > 0


def test_world_size_picks_the_first_epoch_on_that_many_ranks(client: Any) -> None:
    pause = PauseAt(batch=20, world_size=3)
    assert submit(client, pause, "on_batch_end", 4, 20, world=2).result(timeout=30) < HELD_S
    held = [submit(client, pause, "on_batch_end", 5, 20, rank=r, world=3) for r in range(3)]
    found = pause.wait_until_paused(timeout=30, client=client)
    assert (found.epoch, found.batch, found.world_size, len(found.workers)) == (5, 20, 3, 3)
    pause.release(client=client)
    client.gather(held)


def test_epoch_end_and_epoch_start(client: Any) -> None:
    at_end = PauseAt(epoch=2)
    held = submit(client, at_end, "on_epoch_end", 2, 85)
    assert at_end.wait_until_paused(timeout=30, client=client).batch is None
    at_end.release(client=client)
    held.result(timeout=30)

    at_start = PauseAt(epoch=2, batch=0)
    # an epoch resumed in its middle has steps already: not its start
    assert submit(client, at_start, "on_epoch_begin", 2, 40).result(timeout=30) < HELD_S
    held = submit(client, at_start, "on_epoch_begin", 3, 0)
    assert at_start.wait_until_paused(timeout=30, client=client).batch == 0
    at_start.release(client=client)
    held.result(timeout=30)


def test_it_holds_once(client: Any) -> None:
    pause = PauseAt(epoch=1, batch=3)
    held = submit(client, pause, "on_batch_end", 1, 3)
    pause.wait_until_paused(timeout=30, client=client)
    pause.release(client=client)
    held.result(timeout=30)
    # a later round (a fresh copy of the callback) gets there again: it passes
    fresh = pickle.loads(pickle.dumps(pause))
    assert submit(client, fresh, "on_batch_end", 1, 3).result(timeout=30) < HELD_S
    # released before the ranks got there: they never stop
    early = PauseAt(epoch=1, batch=3)
    early.release(client=client)
    assert submit(client, early, "on_batch_end", 1, 3).result(timeout=30) < HELD_S


def test_a_timeout_lets_the_ranks_go_on_by_themselves(client: Any) -> None:
    pause = PauseAt(epoch=1, batch=1, timeout=0.5)
    seconds = submit(client, pause, "on_batch_end", 1, 1).result(timeout=30)
    assert 0.5 <= seconds < 5


# -- the notebook's side ----------------------------------------------------------------


def test_waiting_stops_when_the_fit_ends_first(client: Any) -> None:
    pause = PauseAt(epoch=5)

    class Ended:
        done = True

        def wait(self) -> None:
            return None

    with pytest.raises(UsageError, match="the fit ended before every rank held at the end of"):
        pause.wait_until_paused(timeout=30, run=Ended(), client=client)

    class Failed(Ended):
        def wait(self) -> None:
            raise RuntimeError("rank 1 failed")

    with pytest.raises(RuntimeError, match="rank 1 failed"):
        pause.wait_until_paused(timeout=30, run=Failed(), client=client)


def test_records_of_an_earlier_round_do_not_count() -> None:
    # rank 1 still shows where it waited in a round that failed while held
    class Signals:
        def __init__(self, records: dict[int, dict[str, Any]]) -> None:
            self.records = records

        def arrival(self, rank: int) -> dict[str, Any] | None:
            return self.records.get(rank)

    now = {"epoch": 4, "batch": 20, "world_size": 2}
    before = {"epoch": 4, "batch": 20, "world_size": 3}
    assert PauseAt._all_arrived(Signals({0: {**now, "worker": "a"},
                                         1: {**before, "worker": "b"}})) is None
    assert PauseAt._all_arrived(Signals({0: {**now, "worker": "a"}})) is None
    assert PauseAt._all_arrived(Signals({0: {**now, "worker": "a"}, 1: {**now, "worker": "b"}})
                                ) == Paused(epoch=4, batch=20, world_size=2, workers=("a", "b"))


def test_outside_a_worker_it_says_what_it_is_for() -> None:
    with pytest.raises(UsageError, match="ranks of sk.fit"):
        PauseAt(epoch=1, batch=1).on_batch_end(net_at(1, 1), training=True)


def test_the_notebook_side_finds_the_current_sessions_client(monkeypatch: pytest.MonkeyPatch,
                                                            client: Any) -> None:
    monkeypatch.setattr(registry, "_SESSIONS", [])
    monkeypatch.setattr("distributed.get_client", lambda: (_ for _ in ()).throw(ValueError()))
    with pytest.raises(UsageError, match="no cluster found"):
        PauseAt().is_paused()
    registry.register(SimpleNamespace(closed=False, client=client))
    assert PauseAt().is_paused() is False  # asked the session's scheduler
