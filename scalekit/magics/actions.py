"""Carrying out ``%scalekit`` commands on the current session.

:class:`ScalekitMagics` is the magic itself. It holds no list of its own: the cluster it
acts on is :func:`scalekit.session.current_session`, the one ``sk.fit`` trains on and the
JupyterLab sidebar shows, whether ``%scalekit up`` or ``sk.cluster()`` started it. ``up``
records in that registry that the magic started the session, so ``%unload_ext scalekit``
closes the magic's clusters and leaves those started from Python alone.

``scalekit.session`` (which imports the backends, hence ``distributed``) is read through
``sys.modules`` until ``up`` needs it: before it is imported no session can exist, and
loading the extension stays light.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from scalekit.errors import ClusterError, ScalekitError
from scalekit.magics.parsing import PROG, Command, parse

logger = logging.getLogger(__name__)

__all__ = ["ScalekitMagics"]


def _default_factory(**kwargs: Any) -> Any:
    from scalekit.session import cluster  # imports the backend (and distributed) lazily

    return cluster(**kwargs)


def _default_display(obj: Any) -> None:
    from IPython.display import display

    display(obj)


def _registry() -> ModuleType | None:
    """``scalekit.session`` once something imported it; ``None`` means no session yet."""
    return sys.modules.get("scalekit.session")


@magics_class
class ScalekitMagics(Magics):
    """The ``%scalekit`` magic.

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
        """The current session of this process (``%scalekit up`` or ``sk.cluster()``)."""
        registry = _registry()
        return registry.current_session() if registry is not None else None

    @property
    def sessions(self) -> list[Any]:
        """The running sessions this magic started, oldest first."""
        registry = _registry()
        if registry is None:
            return []
        return registry.active_sessions(started_by=registry.MAGIC)

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
        if self.session is not None:
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
        from scalekit import session as registry  # loaded by the factory already

        registry.register(session, started_by=registry.MAGIC)
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
        session.close()  # a ClusterSession leaves the registry; others are skipped as closed
        print(_closed_line(session, deleted=callable(delete)))

    # -- cleanup ------------------------------------------------------------------------
    def close_all(self, timeout: float | None = None) -> int:
        """Close every session this magic started; return how many were open.

        With ``timeout`` the closing runs on a helper thread and this returns after at
        most ``timeout`` seconds.
        """
        registry = _registry()
        if registry is None:
            return 0
        open_sessions = registry.active_sessions(started_by=registry.MAGIC)
        if open_sessions:
            _bounded(lambda: registry.close_all(started_by=registry.MAGIC), timeout)
        return len(open_sessions)


def _bounded(fn: Callable[[], Any], timeout: float | None) -> None:
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
