"""The one registry of this process's cluster sessions: which cluster is current.

One answer to "which cluster is current", read by ``sk.fit``, the ``%scalekit`` magic
and the JupyterLab bridge alike: the newest session started and not closed. Each entry
also says who started it, because ``%unload_ext scalekit`` closes only the magic's
clusters. It imports nothing heavy (no backend, no ``distributed``), so the lab bridge
reads it without loading a cluster backend; :mod:`scalekit.session` registers the
sessions it starts and re-exports these functions.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalekit.session import ClusterSession

logger = logging.getLogger(__name__)

_SESSIONS: list[_Entry] = []  # strong refs, oldest first: close_all must reach every cluster
_REGISTRY = threading.Lock()
_atexit_registered = False


API = "api"  # sk.cluster(...), ClusterSession.start()
MAGIC = "magic"  # %scalekit up


@dataclasses.dataclass(eq=False)
class _Entry:
    session: Any  # a ClusterSession (the magic's tests register stand-ins)
    started_by: str


def register(session: Any, *, started_by: str = API) -> None:
    """Add a started session to the registry; it becomes the current one.

    Registering a session that is already there only records ``started_by`` (the magic
    starts its clusters through :func:`cluster`, which registers them as ``"api"``).

    Parameters
    ----------
    session : ClusterSession
        Anything with ``closed`` and ``close()``.
    started_by : {"api", "magic"}
        Who started it: ``%unload_ext scalekit`` closes the magic's sessions only.
    """
    global _atexit_registered
    with _REGISTRY:
        for entry in _SESSIONS:
            if entry.session is session:
                entry.started_by = started_by
                break
        else:
            _SESSIONS.append(_Entry(session, started_by))
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True


def _unregister(session: Any) -> None:
    with _REGISTRY:
        _SESSIONS[:] = [e for e in _SESSIONS if e.session is not session]


def _open_entries(started_by: str | None) -> list[_Entry]:
    """Entries not closed, oldest first; forgets sessions closed behind our back."""
    with _REGISTRY:
        _SESSIONS[:] = [e for e in _SESSIONS if not getattr(e.session, "closed", False)]
        return [e for e in _SESSIONS if started_by in (None, e.started_by)]


def active_sessions(started_by: str | None = None) -> list[ClusterSession]:
    """Sessions started in this process and not closed yet, oldest first.

    Parameters
    ----------
    started_by : {"api", "magic"}, optional
        Only those started this way; by default all.
    """
    return [e.session for e in _open_entries(started_by)]


def current_session() -> ClusterSession | None:
    """The session ``sk.fit``, ``%scalekit`` and the JupyterLab sidebar act on.

    The newest session started in this process and not closed, or ``None``.
    """
    sessions = active_sessions()
    return sessions[-1] if sessions else None


def close_all(started_by: str | None = None) -> int:
    """Close every session this process started (or only those ``started_by``).

    Returns how many were open. They leave the registry before they are closed, so a
    second call (an ``atexit`` hook after a kernel-shutdown hook) closes nothing twice.
    """
    with _REGISTRY:
        entries = [e for e in _SESSIONS if started_by in (None, e.started_by)]
        _SESSIONS[:] = [e for e in _SESSIONS if started_by not in (None, e.started_by)]
    sessions = [e.session for e in entries if not getattr(e.session, "closed", False)]
    for session in sessions:
        try:
            session.close()
        except Exception:
            logger.warning("closing %r failed", session, exc_info=True)
    return len(sessions)
