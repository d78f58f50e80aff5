"""Parsing ``%scalekit`` lines: a line in, a :class:`Command` out (pure, no cluster).

``parse`` is argparse under the hood, made safe for a kernel: help and errors raise
(``_Help``, ``IPython.core.error.UsageError``) instead of printing and calling
``sys.exit``. Nothing here touches a session; :mod:`scalekit.magics.actions` carries a
command out.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError

PROG = "%scalekit"
ACTIONS = ("up", "scale", "adapt", "adapt-off", "status", "down", "help")

__all__ = ["ACTIONS", "PROG", "Command", "parse"]


@dataclasses.dataclass(frozen=True)
class Command:
    """One parsed ``%scalekit`` line.

    Attributes
    ----------
    action : str
        One of ``up``, ``scale``, ``adapt``, ``adapt-off``, ``status``, ``down``, ``help``.
    workers : int, optional
        ``up --workers`` or the ``N`` of ``scale N``.
    threads_per_worker, memory_limit, backend, max_workers, gpus : optional
        ``up`` options; ``None`` means "from ``dask.config``".
    panel : bool
        ``up`` shows the live panel unless ``--no-panel``.
    image, namespace, keep : optional
        ``up`` options of the kubernetes backend (``scalekit.kubernetes.*``).
    minimum, maximum : int, optional
        ``adapt MIN MAX`` (both ``None``: the configured defaults).
    text : str
        The help text, for ``help``.
    """

    action: str
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    backend: str | None = None
    max_workers: int | None = None
    panel: bool = True
    minimum: int | None = None
    maximum: int | None = None
    text: str = ""
    image: str | None = None
    namespace: str | None = None
    keep: bool = False
    gpus: str | None = None
    connect: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {ACTIONS}")

    def cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`scalekit.session.cluster` (``up`` only)."""
        return {
            "workers": self.workers,
            "backend": self.backend,
            "threads_per_worker": self.threads_per_worker,
            "memory_limit": self.memory_limit,
            "max_workers": self.max_workers,
            "gpus": self.gpus,
            "connect": self.connect,
        }

    def kubernetes_options(self) -> dict[str, Any]:
        """``scalekit.kubernetes.*`` settings given on the ``up`` line (``up`` only)."""
        options: dict[str, Any] = {"image": self.image, "namespace": self.namespace}
        if self.keep:
            options["keep-on-shutdown"] = True
        return {k: v for k, v in options.items() if v is not None}


class _Help(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing and calling ``sys.exit``."""

    def print_help(self, file: Any = None) -> NoReturn:  # the -h action calls this first
        raise _Help(self.format_help())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(f"{self.prog}: {message or 'exit'}".strip())

    def error(self, message: str) -> NoReturn:
        usage = self.format_usage().strip()
        raise UsageError(f"{self.prog}: {message}\n{usage}\n(`{PROG} --help` lists commands)")


def _build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    parser = _Parser(
        prog=PROG,
        description="Start and steer a Dask cluster from the notebook.",
        epilog="`%scalekit <command> --help` shows a command's options.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub: dict[str, _Parser] = {}

    up = sub["up"] = commands.add_parser(
        "up", help="start a cluster and show its live panel", allow_abbrev=False,
        description="Start a cluster (unset options come from dask.config, "
        "scalekit.cluster.*) and show its live panel.",
    )
    up.add_argument("-n", "--workers", type=int, metavar="N", help="workers to start")
    up.add_argument("--threads", type=int, metavar="T", dest="threads_per_worker",
                    help="threads per worker")
    up.add_argument("--memory-limit", metavar="SIZE",
                    help="per worker: 'auto', a size such as '2GiB', or 'none'")
    up.add_argument("--backend", metavar="NAME", help="'local' or 'kubernetes'")
    up.add_argument("--max-workers", type=int, metavar="M",
                    help="upper bound for scale, the slider and adaptive")
    up.add_argument("--connect", metavar="TARGET",
                    help="join a running cluster instead of starting one: 'local' (what "
                    "`scalekit cluster up` started), 'local:NAME', a scheduler file or "
                    "an address")
    up.add_argument("--gpus", metavar="auto|N|IDS",
                    help="one worker per GPU, pinned to it: 'auto' (every GPU), N (the "
                    "first N) or ids such as 0,2")
    up.add_argument("--no-panel", dest="panel", action="store_false",
                    help="do not display the live panel")
    up.add_argument("--image", metavar="IMAGE",
                    help="kubernetes: scheduler and worker image")
    up.add_argument("--namespace", metavar="NS", help="kubernetes: namespace of the cluster")
    up.add_argument("--keep", action="store_true",
                    help="kubernetes: keep the cluster running after the kernel shuts down "
                    "(`down` still deletes it)")

    scale = sub["scale"] = commands.add_parser(
        "scale", help="scale to N workers (switches adaptive off)", allow_abbrev=False,
        description="Scale the running cluster to N workers; this switches adaptive off.",
    )
    scale.add_argument("n", type=int, metavar="N", help="number of workers")

    adapt = sub["adapt"] = commands.add_parser(
        "adapt", help="adaptive scaling between MIN and MAX workers, or 'adapt off'",
        allow_abbrev=False,
        usage="%(prog)s [-h] [MIN MAX | off]",
        description="Let the cluster size itself between MIN and MAX workers "
        "(no bounds: the configured defaults); `adapt off` keeps the current workers.",
    )
    adapt.add_argument("bounds", nargs="*", metavar="MIN MAX | off",
                       help="two worker counts, or 'off'")

    sub["status"] = commands.add_parser(
        "status", help="print a summary of the cluster", allow_abbrev=False,
        description="Print a text summary of the running cluster.",
    )
    sub["down"] = commands.add_parser(
        "down", help="close the cluster", allow_abbrev=False,
        description="Close the running cluster and its workers. A kubernetes cluster is "
        "deleted, also one started with --keep (which only spares it at kernel shutdown).",
    )
    return parser, sub


def _int(parser: _Parser, name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        parser.error(f"argument {name}: invalid int value: {value!r}")


def parse(line: str) -> Command:
    """Parse a ``%scalekit`` line; raise ``IPython.core.error.UsageError`` if it is wrong.

    ``--help`` (anywhere) gives ``Command("help", text=...)``, as does an empty line.
    """
    try:
        argv = shlex.split(line)
    except ValueError as exc:  # e.g. an unclosed quote
        raise UsageError(f"{PROG}: cannot split {line!r}: {exc}") from None
    parser, sub = _build_parser()
    if not argv:
        return Command("help", text=parser.format_help())
    try:
        ns, extra = parser.parse_known_args(argv)
    except _Help as shown:
        return Command("help", text=shown.text)
    if ns.command is None:  # only options, e.g. `%scalekit --bogus`
        parser.error(
            f"unrecognized arguments: {' '.join(extra)}" if extra else "a command is required"
        )
    if extra:
        sub[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")

    if ns.command == "up":
        return Command(
            "up",
            workers=ns.workers,
            threads_per_worker=ns.threads_per_worker,
            memory_limit=ns.memory_limit,
            backend=ns.backend,
            max_workers=ns.max_workers,
            panel=ns.panel,
            image=ns.image,
            namespace=ns.namespace,
            keep=ns.keep,
            gpus=ns.gpus,
            connect=ns.connect,
        )
    if ns.command == "scale":
        return Command("scale", workers=ns.n)
    if ns.command == "adapt":
        bounds: list[str] = ns.bounds
        if [b.lower() for b in bounds] == ["off"]:
            return Command("adapt-off")
        if not bounds:
            return Command("adapt")
        if len(bounds) != 2:
            sub["adapt"].error(
                f"expected MIN and MAX (two worker counts) or 'off', got {' '.join(bounds)!r}"
            )
        lo = _int(sub["adapt"], "MIN", bounds[0])
        hi = _int(sub["adapt"], "MAX", bounds[1])
        return Command("adapt", minimum=lo, maximum=hi)
    return Command(ns.command)
