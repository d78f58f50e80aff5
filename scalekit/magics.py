"""The ``%scalekit`` line magic: start, scale, adapt, inspect and stop a cluster.

::

    %load_ext scalekit
    %scalekit up --workers 2          # start a local cluster and show its panel
    %scalekit scale 4
    %scalekit adapt 1 8               # or: %scalekit adapt off
    %scalekit status
    %scalekit down

The magic is two layers: :func:`parse` turns a line into a :class:`Command` (pure, no
cluster, unit-testable) and :class:`ScalekitMagics` carries a command out on the session
it started. Loading the extension imports neither torch, ``distributed`` nor ipywidgets;
``up`` imports them when it starts a cluster.

Clusters the magic started are closed by ``%unload_ext scalekit``, at interpreter exit
(``atexit``) and, inside an ipykernel, when the kernel gets a ``shutdown_request``
(shutdown or restart): ipykernel calls ``kernel.do_shutdown(restart)`` and *then*
SIGTERM/SIGKILLs every child process in its process group, so the magic closes its
clusters in ``do_shutdown``, while the workers are still there to be retired cleanly.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import logging
import shlex
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from scalekit.errors import ClusterError, ScalekitError

logger = logging.getLogger(__name__)

PROG = "%scalekit"
SHUTDOWN_TIMEOUT = 2.0  # jupyter_client SIGTERMs a kernel still up 2.5 s after shutdown_request
ACTIONS = ("up", "scale", "adapt", "adapt-off", "status", "down", "help")


# --- parsing ---------------------------------------------------------------------------


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


# --- acting ----------------------------------------------------------------------------


def _default_factory(**kwargs: Any) -> Any:
    from scalekit.session import cluster  # imports the backend (and distributed) lazily

    return cluster(**kwargs)


def _default_display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


@magics_class
class ScalekitMagics(Magics):
    """The ``%scalekit`` magic and the sessions it started.

    Parameters
    ----------
    shell : InteractiveShell
    factory : callable, optional
        ``factory(**cluster_kwargs) -> session``; default :func:`scalekit.session.cluster`.
        A session needs ``scale``, ``adapt``, ``stop_adapt``, ``close``, ``closed`` and a
        readable ``repr``.
    display : callable, optional
        Shows the session after ``up``; default ``IPython.display.display``.
    """

    def __init__(
        self,
        shell: Any = None,
        *,
        factory: Callable[..., Any] | None = None,
        display: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(shell)
        self.factory = factory or _default_factory
        self.display = display or _default_display
        self.sessions: list[Any] = []  # every session this magic started, oldest first
        self._lock = threading.Lock()

    # -- the magic ----------------------------------------------------------------------
    @line_magic("scalekit")
    def scalekit(self, line: str = "") -> None:
        """Start and steer a Dask cluster: ``%scalekit up|scale|adapt|status|down``.

        ``%scalekit --help`` lists the commands, ``%scalekit <command> --help`` their options.
        """
        try:
            self.execute(parse(line))
        except SystemExit:  # belt and braces: never let argparse end the kernel
            raise UsageError(f"{PROG}: invalid arguments: {line!r}") from None

    def execute(self, command: Command) -> None:
        """Carry out a parsed command (errors in user input become ``UsageError``)."""
        handler = getattr(self, "_do_" + command.action.replace("-", "_"))
        try:
            handler(command)
        except ClusterError:
            raise  # a real failure: keep the evidence (traceback, worker logs)
        except ScalekitError as exc:  # ConfigError / scalekit.UsageError: bad input
            raise UsageError(str(exc)) from exc

    @property
    def session(self) -> Any | None:
        """The running session this magic started, or ``None``."""
        with self._lock:
            self.sessions = [s for s in self.sessions if not s.closed]
            return self.sessions[-1] if self.sessions else None

    def _running(self, what: str) -> Any:
        session = self.session
        if session is None:
            raise UsageError(
                f"{PROG} {what}: no cluster is running; start one with `{PROG} up`."
            )
        return session

    def _do_help(self, command: Command) -> None:
        print(command.text.rstrip())

    def _do_up(self, command: Command) -> None:
        current = self.session
        if current is not None:
            raise UsageError(
                f"{PROG} up: a cluster is already running. Use `{PROG} scale N` to change "
                f"its size or `{PROG} down` to close it first."
            )
        kwargs = {k: v for k, v in command.cluster_kwargs().items() if v is not None}
        options = command.kubernetes_options()
        if options:
            import dask.config

            backend = command.backend or dask.config.get("scalekit.cluster.backend", "local")
            if backend != "kubernetes":
                raise UsageError(
                    f"{PROG} up: --image, --namespace and --keep apply to the kubernetes "
                    "backend; add `--backend kubernetes`."
                )
            with dask.config.set({f"scalekit.kubernetes.{k}": v for k, v in options.items()}):
                session = self.factory(**kwargs)
        else:
            session = self.factory(**kwargs)
        with self._lock:
            self.sessions.append(session)
        if command.panel:
            self.display(session)
        else:
            print(_started_line(session))

    def _do_scale(self, command: Command) -> None:
        session = self._running("scale")
        session.scale(command.workers)
        print(f"scaling to {command.workers} worker{'s' if command.workers != 1 else ''}")

    def _do_adapt(self, command: Command) -> None:
        session = self._running("adapt")
        session.adapt(command.minimum, command.maximum)
        if command.minimum is None:
            print("adaptive scaling on (configured bounds)")
        else:
            print(f"adaptive scaling on: {command.minimum}..{command.maximum} workers")

    def _do_adapt_off(self, command: Command) -> None:
        session = self._running("adapt off")
        session.stop_adapt()
        print("adaptive scaling off")

    def _do_status(self, command: Command) -> None:
        session = self.session
        print(repr(session) if session is not None else f"no cluster running (`{PROG} up`)")

    def _do_down(self, command: Command) -> None:
        session = self.session
        if session is None:
            print("no cluster running")
            return
        # a backend that can outlive the kernel (kubernetes, started with --keep) is
        # deleted: keep-on-shutdown spares it at kernel shutdown, not at an explicit down
        delete = getattr(getattr(session, "backend", None), "delete", None)
        if callable(delete):
            delete()
        session.close()
        with self._lock:
            if session in self.sessions:
                self.sessions.remove(session)
        print(_closed_line(session, deleted=callable(delete)))

    # -- cleanup ------------------------------------------------------------------------
    def close_all(self, timeout: float | None = None) -> int:
        """Close every session this magic started; return how many were open.

        With ``timeout`` the closing runs on a helper thread and this returns after at
        most ``timeout`` seconds.
        """
        with self._lock:
            open_sessions = [s for s in self.sessions if not s.closed]
            self.sessions = []

        def close() -> None:
            for session in open_sessions:
                try:
                    session.close()
                except Exception:
                    logger.warning("closing %r failed", session, exc_info=True)

        if open_sessions:
            _bounded(close, timeout)
        return len(open_sessions)


def _bounded(fn: Callable[[], None], timeout: float | None) -> None:
    """Call ``fn``; with a timeout, on a daemon thread, waiting at most ``timeout`` s."""
    if timeout is None:
        fn()
        return
    worker = threading.Thread(target=fn, name="scalekit-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        logger.warning("clusters still closing after %gs; shutdown goes on", timeout)


def _closed_line(session: Any, deleted: bool) -> str:
    backend = getattr(session, "backend", None)
    name, namespace = (getattr(backend, "cluster_name", None),
                       getattr(backend, "namespace", None))
    if not deleted:
        return "cluster closed"
    return f"cluster {namespace}/{name} deleted" if name else "cluster deleted"


def _started_line(session: Any) -> str:
    config = getattr(session, "config", None)
    backend = getattr(config, "backend", "?")
    workers = getattr(config, "workers", "?")
    line = f"{backend} cluster up with {workers} worker{'s' if workers != 1 else ''}"
    link = getattr(session, "dashboard_link", None)
    return f"{line}; dashboard: {link}" if link else line


# --- kernel shutdown ---------------------------------------------------------------------


def _at_kernel_shutdown(magics: ScalekitMagics) -> None:
    """Close every cluster of this process, then let multiprocessing's tracker exit.

    The process is about to end, so clusters started through the Python API
    (``scalekit.cluster``) are closed too.
    """
    magics.close_all()
    _close_api_sessions()
    _stop_resource_tracker()


def _close_api_sessions() -> None:
    session_module = sys.modules.get("scalekit.session")  # not imported: none started
    if session_module is not None:
        session_module.close_all()


def _stop_resource_tracker() -> None:
    """Stop the resource tracker process that spawning workers started.

    It ignores SIGTERM: left alone, it holds ipykernel's termination of children for
    ~4 s (SIGTERMs, then SIGKILL), past jupyter_client's 2.5 s grace, and the kernel
    itself is then SIGTERMed instead of exiting normally. Closing its pipe makes it
    clean up and exit; multiprocessing restarts it on demand.
    """
    try:
        from multiprocessing import resource_tracker

        stop = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop is not None:
            stop()
    except Exception:
        logger.debug("stopping the multiprocessing resource tracker failed", exc_info=True)


def _hook_kernel_shutdown(shell: Any, magics: ScalekitMagics) -> None:
    """Close clusters in ``kernel.do_shutdown``, before ipykernel kills the children.

    ipykernel (6 and 7) answers ``shutdown_request`` with ``do_shutdown(restart)``, then
    ``_at_shutdown()``, which SIGTERMs and SIGKILLs the kernel's process group; ``atexit``
    runs only after that, when the workers are already gone.
    """
    kernel = getattr(shell, "kernel", None)
    original = getattr(kernel, "do_shutdown", None)
    if original is None or getattr(original, "_scalekit_magics", None) is not None:
        return

    @functools.wraps(original)
    def do_shutdown(restart: bool) -> Any:
        try:
            _bounded(lambda: _at_kernel_shutdown(magics), SHUTDOWN_TIMEOUT)
        except Exception:  # shutting down must go on whatever happened
            logger.warning("closing clusters at kernel shutdown failed", exc_info=True)
        return original(restart)

    do_shutdown._scalekit_magics = magics  # type: ignore[attr-defined]
    do_shutdown._scalekit_previous = kernel.__dict__.get("do_shutdown")  # type: ignore[attr-defined]
    kernel.do_shutdown = do_shutdown


def _unhook_kernel_shutdown(shell: Any) -> None:
    kernel = getattr(shell, "kernel", None)
    hook = getattr(kernel, "__dict__", {}).get("do_shutdown")
    if getattr(hook, "_scalekit_magics", None) is None:
        return
    previous = hook._scalekit_previous
    if previous is None:
        del kernel.do_shutdown  # back to the class's method
    else:
        kernel.do_shutdown = previous


def _registered(shell: Any) -> ScalekitMagics | None:
    magics = shell.magics_manager.registry.get(ScalekitMagics.__name__)
    return magics if isinstance(magics, ScalekitMagics) else None


def load_ipython_extension(
    ipython: Any,
    *,
    factory: Callable[..., Any] | None = None,
    display: Callable[[Any], None] | None = None,
) -> ScalekitMagics:
    """Register ``%scalekit`` on ``ipython`` (idempotent) and return the magics object.

    ``factory`` and ``display`` replace the session factory and the display function
    (tests inject fakes here).
    """
    magics = _registered(ipython)
    if magics is None:
        magics = ScalekitMagics(ipython, factory=factory, display=display)
        ipython.register_magics(magics)
        atexit.register(magics.close_all)
        _hook_kernel_shutdown(ipython, magics)
    else:
        magics.factory = factory or magics.factory
        magics.display = display or magics.display
    from scalekit import labext  # the JupyterLab extension's comm target (extensions/)

    labext.register(ipython)
    return magics


def unload_ipython_extension(ipython: Any) -> None:
    """Close the clusters ``%scalekit`` started and remove the magic."""
    magics = _registered(ipython)
    if magics is None:
        return
    try:
        magics.close_all()
    finally:
        atexit.unregister(magics.close_all)
        _unhook_kernel_shutdown(ipython)
        manager = ipython.magics_manager
        manager.registry.pop(ScalekitMagics.__name__, None)
        for name in magics.magics.get("line", {}):
            manager.magics["line"].pop(name, None)
        extensions = getattr(ipython, "extension_manager", None)
        if extensions is not None:  # called directly: let `%load_ext scalekit` work again
            extensions.loaded.discard("scalekit")

