"""``%scalekit``: the parser as a table, and the magic on a real shell with a fake session."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import scalekit.magics as magics_module
from scalekit.config import AdaptConfig, ClusterConfig
from scalekit.errors import ClusterError
from scalekit.magics import Command, ScalekitMagics, parse

# --- parsing -----------------------------------------------------------------------------

VALID = [
    ("up", Command("up")),
    ("up --workers 3", Command("up", workers=3)),
    ("up -n 3", Command("up", workers=3)),
    (
        "up --workers 4 --threads 2 --memory-limit 2GiB --backend local --max-workers 8",
        Command("up", workers=4, threads_per_worker=2, memory_limit="2GiB", backend="local",
                max_workers=8),
    ),
    ("up --no-panel", Command("up", panel=False)),
    ("  up   --workers=2  --no-panel ", Command("up", workers=2, panel=False)),
    ("up --memory-limit none", Command("up", memory_limit="none")),
    ("up --backend kubernetes", Command("up", backend="kubernetes")),
    ("scale 3", Command("scale", workers=3)),
    ("scale 0", Command("scale", workers=0)),  # syntactically fine; the config says no
    ("scale -1", Command("scale", workers=-1)),
    ("adapt 1 4", Command("adapt", minimum=1, maximum=4)),
    ("adapt 5 2", Command("adapt", minimum=5, maximum=2)),  # the config says no
    ("adapt", Command("adapt")),
    ("adapt off", Command("adapt-off")),
    ("adapt OFF", Command("adapt-off")),
    ("status", Command("status")),
    ("down", Command("down")),
]

INVALID = [
    ("bogus", "invalid choice: 'bogus'"),
    ("UP", "invalid choice: 'UP'"),
    ("--bogus", "unrecognized arguments: --bogus"),
    ("--", "unrecognized arguments: --"),
    ("up --foo", "unrecognized arguments: --foo"),
    ("up --workers 2 extra", "unrecognized arguments: extra"),
    ("up --work 2", "unrecognized arguments: --work"),  # no abbreviations
    ("up --workers", "expected one argument"),
    ("up --workers two", "invalid int value: 'two'"),
    ("up --threads 1.5", "invalid int value: '1.5'"),
    ("up --max-workers x", "invalid int value: 'x'"),
    ("scale", "the following arguments are required: N"),
    ("scale x", "invalid int value: 'x'"),
    ("scale 2 3", "unrecognized arguments: 3"),
    ("scale 2.5", "invalid int value: '2.5'"),
    ("adapt 3", "expected MIN and MAX"),
    ("adapt 1 2 3", "expected MIN and MAX"),
    ("adapt a 3", "argument MIN: invalid int value: 'a'"),
    ("adapt 1 b", "argument MAX: invalid int value: 'b'"),
    ("adapt off now", "argument MIN: invalid int value: 'off'"),
    ("status now", "unrecognized arguments: now"),
    ("down --force", "unrecognized arguments: --force"),
    ('up --memory-limit "2GiB', "No closing quotation"),
]


@pytest.mark.parametrize(("line", "expected"), VALID, ids=[v[0] or "<empty>" for v in VALID])
def test_parse_valid(line: str, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(("line", "fragment"), INVALID, ids=[i[0] for i in INVALID])
def test_parse_invalid_raises_usage_error(line: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(line)
    message = str(info.value)
    assert fragment in message
    assert message.startswith("%scalekit")
    assert "usage: %scalekit" in message or "cannot split" in message


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("", ["usage: %scalekit", "up", "scale", "adapt", "status", "down"]),
        ("--help", ["usage: %scalekit", "up", "scale", "adapt", "status", "down"]),
        ("-h", ["usage: %scalekit"]),
        ("up --help", ["usage: %scalekit up", "--workers", "--threads", "--memory-limit",
                       "--backend", "--max-workers", "--no-panel"]),
        ("up --workers 2 -h", ["usage: %scalekit up"]),
        ("scale --help", ["usage: %scalekit scale", "N"]),
        ("adapt --help", ["usage: %scalekit adapt [-h] [MIN MAX | off]"]),
        ("status -h", ["usage: %scalekit status"]),
        ("down --help", ["usage: %scalekit down"]),
    ],
)
def test_parse_help(line: str, fragments: list[str]) -> None:
    command = parse(line)
    assert command.action == "help"
    for fragment in fragments:
        assert fragment in command.text


def test_command_cluster_kwargs_and_validation() -> None:
    command = parse("up -n 3 --threads 2 --memory-limit 1GiB --max-workers 5")
    assert command.cluster_kwargs() == {
        "workers": 3, "backend": None, "threads_per_worker": 2, "memory_limit": "1GiB",
        "max_workers": 5, "gpus": None,
    }
    assert parse("up --gpus auto").cluster_kwargs()["gpus"] == "auto"
    assert parse("up --gpus 0,2").cluster_kwargs()["gpus"] == "0,2"
    with pytest.raises(ValueError, match="unknown action"):
        Command("launch")


# --- the magic on a real shell, with a fake session ---------------------------------------


class FakeSession:
    """Just enough of ClusterSession, validating with the real config objects."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.config = ClusterConfig.from_config(**kwargs)
        self.workers = self.config.workers
        self.adaptive: tuple[int, int] | None = None
        self.closed = False
        self.calls: list[tuple[object, ...]] = []
        self.dashboard_link = None

    def scale(self, n: int) -> None:
        n = self.config.check_workers(n)
        self.calls.append(("scale", n))
        self.adaptive, self.workers = None, n

    def adapt(self, minimum: int | None = None, maximum: int | None = None) -> None:
        bounds = AdaptConfig.from_config(minimum=minimum, maximum=maximum)
        bounds.within(self.config.max_workers)
        self.calls.append(("adapt", bounds.minimum, bounds.maximum))
        self.adaptive = (bounds.minimum, bounds.maximum)

    def stop_adapt(self) -> None:
        self.calls.append(("stop_adapt",))
        self.adaptive = None

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True

    def state(self) -> tuple[int, tuple[int, int] | None, bool]:
        return self.workers, self.adaptive, self.closed

    def __repr__(self) -> str:
        return f"FakeSession: {self.workers} workers, adaptive={self.adaptive}"


class Factory:
    def __init__(self) -> None:
        self.made: list[FakeSession] = []

    def __call__(self, **kwargs: object) -> FakeSession:
        session = FakeSession(**kwargs)
        self.made.append(session)
        return session


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    yield ip
    magics_module.unload_ipython_extension(ip)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def shown() -> list[object]:
    return []


@pytest.fixture
def magic(shell, factory, shown) -> ScalekitMagics:
    return magics_module.load_ipython_extension(shell, factory=factory, display=shown.append)


def run(shell, line: str) -> None:
    shell.run_line_magic("scalekit", line)


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


def test_unload_closes_sessions_and_removes_the_magic(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    magics_module.unload_ipython_extension(shell)
    assert factory.made[0].closed
    assert "scalekit" not in shell.magics_manager.magics["line"]
    assert ScalekitMagics.__name__ not in shell.magics_manager.registry
    magics_module.unload_ipython_extension(shell)  # twice is harmless
    shell.run_line_magic("load_ext", "scalekit")  # and the extension loads again
    assert "scalekit" in shell.magics_manager.magics["line"]


def test_load_is_idempotent(shell, magic, factory) -> None:
    run(shell, "up --no-panel")
    again = magics_module.load_ipython_extension(shell)
    assert again is magic and again.session is factory.made[0]


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


class FakeKernel:
    def __init__(self) -> None:
        self.shutdowns: list[tuple[bool, bool]] = []
        self.magic: ScalekitMagics | None = None

    def do_shutdown(self, restart: bool) -> dict[str, object]:
        open_sessions = self.magic is not None and self.magic.session is not None
        self.shutdowns.append((restart, open_sessions))
        return {"status": "ok", "restart": restart}


def test_kernel_shutdown_closes_sessions_first(factory, monkeypatch) -> None:
    steps: list[str] = []  # the process-wide steps, recorded instead of run here
    monkeypatch.setattr(magics_module, "_close_api_sessions", lambda: steps.append("api"))
    monkeypatch.setattr(magics_module, "_stop_resource_tracker", lambda: steps.append("rt"))
    ip = InteractiveShell.instance()
    kernel = FakeKernel()
    ip.kernel = kernel  # as ipykernel's ZMQInteractiveShell has
    try:
        magic = magics_module.load_ipython_extension(ip, factory=factory, display=print)
        kernel.magic = magic
        assert "do_shutdown" in kernel.__dict__  # the instance attribute shadows the method
        ip.run_line_magic("scalekit", "up --no-panel")
        reply = kernel.do_shutdown(True)  # what ipykernel's shutdown_request calls
        assert reply == {"status": "ok", "restart": True}
        assert factory.made[0].closed
        assert kernel.shutdowns == [(True, False)]  # closed *before* the kernel's own step
        assert steps == ["api", "rt"]
        magics_module.unload_ipython_extension(ip)
        assert "do_shutdown" not in kernel.__dict__  # restored
    finally:
        magics_module.unload_ipython_extension(ip)
        del ip.kernel


def test_atexit_hook_is_registered_and_removed(monkeypatch, factory) -> None:
    registered: list[object] = []
    monkeypatch.setattr(magics_module.atexit, "register", registered.append)
    monkeypatch.setattr(magics_module.atexit, "unregister", registered.remove)
    ip = InteractiveShell.instance()
    magic = magics_module.load_ipython_extension(ip, factory=factory)
    assert registered == [magic.close_all]
    magics_module.unload_ipython_extension(ip)
    assert registered == []


# --- loading is cheap -------------------------------------------------------------------

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    before = set(sys.modules)
    t0 = time.perf_counter()
    ip.run_line_magic("load_ext", "scalekit")
    seconds = time.perf_counter() - t0
    ok = "scalekit" in ip.magics_manager.magics["line"]
    t0 = time.perf_counter()
    ip.run_line_magic("scalekit", "--help")
    help_seconds = time.perf_counter() - t0
    heavy = sorted(
        m for m in sys.modules
        if m.split(".")[0] in ("torch", "distributed", "ipywidgets", "skorch", "sklearn")
    )
    print(json.dumps({"seconds": seconds, "help_seconds": help_seconds, "ok": ok,
                      "heavy": heavy, "new": len(set(sys.modules) - before)}))
    """
)


def test_load_ext_is_light_and_fast(tmp_path, capsys) -> None:
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"]
    assert result["heavy"] == []
    with capsys.disabled():
        print(
            f"\n%load_ext scalekit: {result['seconds'] * 1000:.1f} ms "
            f"({result['new']} new modules); %scalekit --help: "
            f"{result['help_seconds'] * 1000:.1f} ms"
        )
    assert result["seconds"] < 2.0
