"""The magic on a real shell, with a fake session, acting on the one session registry."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from scalekit.errors import ClusterError

from .fakes import FakeSession, run


def test_up_starts_a_session_and_displays_it(shell, magic, factory, shown, capsys) -> None:
    run(shell, "up --workers 3 --threads 2")
    [session] = factory.made
    assert session.kwargs == {"workers": 3, "threads_per_worker": 2}
    assert shown == [session]
    assert magic.session is session


def test_up_no_panel_prints_a_line(shell, magic, factory, shown, capsys) -> None:
    run(shell, "up --no-panel")
    assert shown == []
    assert "local cluster up with 2 workers" in capsys.readouterr().out


def test_up_twice_is_an_error_pointing_to_scale_and_down(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    with pytest.raises(UsageError, match="already running.*%scalekit scale.*%scalekit down"):
        run(shell, "up --workers 4")
    assert len(factory.made) == 1
    assert factory.made[0].state() == (2, None, False)


def test_scale_adapt_status_down(shell, magic, factory, capsys) -> None:
    run(shell, "up --no-panel")
    session = factory.made[0]
    run(shell, "scale 5")
    assert session.state() == (5, None, False)
    run(shell, "adapt 1 6")
    assert session.adaptive == (1, 6)
    run(shell, "adapt off")
    assert session.adaptive is None
    run(shell, "adapt")  # configured defaults
    assert session.adaptive == (1, 4)
    capsys.readouterr()
    run(shell, "status")
    assert capsys.readouterr().out.strip() == repr(session)
    run(shell, "down")
    assert session.closed
    assert magic.session is None
    assert [c[0] for c in session.calls] == [
        "scale", "adapt", "stop_adapt", "adapt", "close",
    ]
    run(shell, "up --no-panel")  # a new one may start after down
    assert len(factory.made) == 2


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("scale 0", "workers: got 0, expected an integer in 1..16"),
        ("scale -3", "expected an integer in 1..16"),
        ("scale 17", "Raise scalekit.cluster.max-workers"),
        ("adapt 5 2", "minimum: got 5, expected at most maximum (2)"),
        ("adapt 1 40", "at most max-workers (16)"),
        ("scale x", "invalid int value"),
        ("scale", "required"),
        ("adapt 2", "expected MIN and MAX"),
        ("up --workers 3", "already running"),
        ("up --bogus", "unrecognized arguments: --bogus"),
        ("launch", "invalid choice"),
    ],
)
def test_errors_are_usage_errors_and_leave_the_session_alone(
    shell, magic, factory, line, fragment
) -> None:
    run(shell, "up --no-panel")
    session = factory.made[0]
    run(shell, "adapt 1 3")
    before, calls = session.state(), list(session.calls)
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        run(shell, line)
    assert session.state() == before
    assert session.calls == calls
    assert len(factory.made) == 1
    assert magic.session is session


def test_run_cell_shows_usage_error_without_traceback(shell, magic, factory, capsys) -> None:
    run(shell, "up --no-panel")
    result = shell.run_cell("%scalekit scale 0")
    assert isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    assert "UsageError" in captured.err + captured.out
    assert "Traceback" not in captured.err + captured.out
    assert factory.made[0].state() == (2, None, False)


@pytest.mark.parametrize("line", ["--help", "-h", "", "up --help", "scale -h", "adapt --help"])
def test_help_prints_and_does_not_exit(shell, magic, capsys, line) -> None:
    run(shell, line)  # no SystemExit
    assert "usage: %scalekit" in capsys.readouterr().out


def test_bad_up_options_start_nothing(shell, magic, factory) -> None:
    with pytest.raises(UsageError, match="cluster.workers: got 0"):
        run(shell, "up --workers 0")
    with pytest.raises(UsageError, match="cluster.backend: got 'cloud'"):
        run(shell, "up --backend cloud")
    with pytest.raises(UsageError, match="Raise max_workers"):
        run(shell, "up --workers 5 --max-workers 4")
    assert factory.made == [] and magic.session is None


def test_without_a_session(shell, magic, capsys) -> None:
    for line in ("scale 2", "adapt 1 2", "adapt off"):
        with pytest.raises(UsageError, match="no cluster is running.*%scalekit up"):
            run(shell, line)
    run(shell, "status")
    run(shell, "down")
    out = capsys.readouterr().out
    assert "no cluster running" in out


def test_cluster_errors_propagate_unchanged(shell, magic) -> None:
    def failing(**kwargs: object) -> FakeSession:
        raise ClusterError("the local cluster failed to start: boom")

    magic.factory = failing
    with pytest.raises(ClusterError, match="boom"):
        run(shell, "up --no-panel")
    assert magic.session is None


def test_session_closed_elsewhere_is_forgotten(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    factory.made[0].close()  # e.g. session.close() from Python
    assert magic.session is None
    run(shell, "up --no-panel")
    assert len(factory.made) == 2


def test_close_all_with_timeout_does_not_hang(shell, magic, factory) -> None:
    import threading

    release = threading.Event()

    class Stuck(FakeSession):
        def close(self) -> None:
            release.wait(10)
            super().close()

    magic.factory = Stuck
    run(shell, "up --no-panel")
    assert magic.close_all(timeout=0.2) == 1
    release.set()


# --- one registry: the magic acts on clusters started from Python too -------------------


def test_the_magic_acts_on_a_cluster_started_from_python(
    shell, magic, factory, api_session, capsys
) -> None:
    run(shell, "scale 3")  # issue 14: "no cluster is running" although sk.fit saw one
    assert api_session.backend.calls[-1] == ("scale", 3)
    assert magic.session is api_session
    run(shell, "adapt 1 3")
    assert api_session.backend.adaptive == (1, 3)
    capsys.readouterr()
    run(shell, "status")
    assert "scalekit cluster · local · running" in capsys.readouterr().out
    with pytest.raises(UsageError, match="already running"):
        run(shell, "up --no-panel")
    assert factory.made == []
