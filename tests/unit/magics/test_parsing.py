"""``%scalekit`` parsing as a table: lines in, commands or usage errors out."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from scalekit.magics import Command, parse

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
        "max_workers": 5, "gpus": None, "connect": None,
    }
    assert parse("up --gpus auto").cluster_kwargs()["gpus"] == "auto"
    assert parse("up --gpus 0,2").cluster_kwargs()["gpus"] == "0,2"
    assert parse("up --connect local:bg").cluster_kwargs()["connect"] == "local:bg"
    with pytest.raises(ValueError, match="unknown action"):
        Command("launch")
