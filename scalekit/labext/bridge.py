"""The lab bridge: this kernel's sessions and runs out as snapshots, intents in.

A :class:`LabBridge` subscribes to the event bus of every session in
:mod:`scalekit.session_registry`, folds the cluster events of each into a
:class:`~scalekit.views.cluster_state.ClusterState` and the training events into
:class:`~scalekit.views.training_state.TrainingState` values (the folds the notebook
panels draw), and sends a JSON snapshot (:mod:`scalekit.views.snapshot`) at most every
:data:`~scalekit.config.MIN_REFRESH_S` seconds, only when something changed (plus a slow
heartbeat), from a daemon thread. The cluster it shows and steers is the registry's
current session, the one ``%scalekit`` and ``sk.fit`` use.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scalekit.errors import ScalekitError, UsageError
from scalekit.events import Event, Notice
from scalekit.labext.cluster_runs import ClusterRuns
from scalekit.labext.intents import carry_out, check_action, intent_data
from scalekit.views.cluster_state import ClusterState
from scalekit.views.snapshot import cluster_dict, run_dict
from scalekit.views.training_state import TrainingState

logger = logging.getLogger(__name__)

TARGET = "scalekit"
# 2: each part carries the strings the sidebar shows ("view"), the extension formats none
PROTOCOL = "scalekit/2"
HEARTBEAT = 5.0  # resend the last snapshot this often while there is something to show
MAX_RUNS = 10  # past runs kept (the running ones always are)

__all__ = ["HEARTBEAT", "MAX_RUNS", "PROTOCOL", "TARGET", "LabBridge"]

_ids = itertools.count(1)


def _refresh_cap() -> float:
    """The one refresh cap, :data:`scalekit.config.MIN_REFRESH_S`.

    Read on first use: ``scalekit.config`` imports dask, and the bridge is made by
    ``%load_ext scalekit``, which stays light (its first tick runs on the pump thread).
    """
    from scalekit.config import MIN_REFRESH_S

    return MIN_REFRESH_S


def _active_sessions() -> list[Any]:
    """The registry's running sessions, oldest first; the last is the current one.

    :mod:`scalekit.session_registry` imports nothing heavy: no backend, no
    ``distributed``.
    """
    from scalekit.session_registry import active_sessions

    return active_sessions()


class _Tracked:
    """One session the bridge listens to, and its bus's cluster events, folded."""

    def __init__(self, session: Any, cluster_id: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.id = cluster_id
        self.cluster = ClusterState(history=2)  # the sidebar draws no history
        self.unsubscribe: Callable[[], None] = lambda: None
        # the runs other kernels, the command line or detached submissions started there
        self.runs = ClusterRuns(self._ask, clock=clock)

    def _ask(self, op: str, **kwargs: Any) -> Any:
        ask = getattr(self.session, "ask_registry", None)
        return None if ask is None else ask(op, **kwargs)


class LabBridge:
    """Snapshots of this kernel's sessions and runs out, user intents in.

    Parameters
    ----------
    sessions : callable, optional
        Returns the running sessions, oldest first (default: :func:`scalekit.session_registry.
        active_sessions`). The last is "the cluster", as
        :func:`scalekit.session_registry.current_session` says.
    broadcast : comm, optional
        Where snapshots are sent (``send(data)``); :func:`register` makes an unopened
        kernel comm. Replies go on the comm an intent came from.
    clock : callable
        Monotonic seconds, for the throttle (tests pass a fake clock).
    interval, heartbeat : float
        At most one snapshot per ``interval`` seconds (never less than, and by default,
        :data:`~scalekit.config.MIN_REFRESH_S`); the last one again every ``heartbeat``
        seconds while there is a cluster or a run to show.
    """

    def __init__(
        self,
        *,
        sessions: Callable[[], Iterable[Any]] = _active_sessions,
        broadcast: Any = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
        heartbeat: float = HEARTBEAT,
        max_runs: int = MAX_RUNS,
    ) -> None:
        self._sessions = sessions
        self.broadcast = broadcast
        self._clock = clock
        self._interval_asked = interval
        self._interval: float | None = None
        self.heartbeat = heartbeat
        self.max_runs = max_runs
        self._lock = threading.RLock()
        self._tracked: dict[int, _Tracked] = {}  # id(session) -> tracked
        self._current: int | None = None  # id() of the last session listed: the current one
        self._runs: dict[str, TrainingState] = {}  # run_id -> folded state, oldest first
        self._links: list[Any] = []  # comms the frontends opened
        self._dirty = True
        self._last_sent: float | None = None
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        """Least seconds between two snapshots: ``interval``, never under the cap."""
        if self._interval is None:
            self._interval = max(float(self._interval_asked or 0.0), _refresh_cap())
        return self._interval

    # -- sessions and events ---------------------------------------------------------
    def refresh(self) -> None:
        """Follow sessions that started and forget those that closed."""
        try:
            listed = [s for s in self._sessions() if not getattr(s, "closed", False)]
        except Exception:
            logger.debug("listing sessions failed", exc_info=True)
            return
        alive = {id(s) for s in listed}
        with self._lock:
            newest = id(listed[-1]) if listed else None  # the registry's current session
            if newest != self._current:
                self._current, self._dirty = newest, True
            gone = [t for key, t in self._tracked.items() if key not in alive]
            new = [s for s in listed if id(s) not in self._tracked]
            for tracked in gone:
                del self._tracked[id(tracked.session)]
            for session in new:
                self._tracked[id(session)] = _Tracked(session, f"c{next(_ids)}",
                                                      self._clock)
            if gone or new:
                self._dirty = True
        for tracked in gone:
            tracked.unsubscribe()
        for session in new:
            tracked = self._tracked.get(id(session))
            if tracked is not None:  # replay brings the latest state at once
                tracked.unsubscribe = session.bus.subscribe(
                    lambda e, t=tracked: self._on_event(t, e), replay=True)

    def _on_event(self, tracked: _Tracked, event: Event) -> None:
        """A bus callback (publisher's thread): fold the event in, mark dirty. Quick."""
        with self._lock:
            if isinstance(event, Notice):
                tracked.cluster.apply(event)
                for state in self._runs.values():  # as the training panel folds them
                    if state.running:
                        state.apply(event)
            elif not tracked.cluster.apply(event):
                if getattr(event, "run_id", None) is None:
                    return  # neither a cluster nor a training event
                self._fold_run(event)
            self._dirty = True
        self._wake.set()

    def _fold_run(self, event: Event) -> None:
        run_id = str(event.run_id)  # type: ignore[attr-defined]
        state = self._runs.get(run_id)
        if state is None:  # a run's start, or a replayed event of a run already going
            state = self._runs[run_id] = TrainingState(run_id=run_id)
            self._forget_old_runs()
        state.apply(event)

    def _forget_old_runs(self) -> None:
        finished = [r for r, s in self._runs.items() if not s.running]
        while len(self._runs) > self.max_runs and finished:
            del self._runs[finished.pop(0)]

    def _current_tracked(self) -> _Tracked | None:
        """The registry's current session (the last one listed), under the lock."""
        return self._tracked.get(self._current) if self._current is not None else None

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The JSON-safe snapshot of the current cluster and of every run kept."""
        with self._lock:
            live = [t for t in self._tracked.values() if t.cluster.live]
            current = self._current_tracked()
            cluster = None
            if current is not None and current.cluster.live:
                view, config = current.cluster, getattr(current.session, "config", None)
                cluster = cluster_dict(
                    view.snapshot, cluster_id=current.id,  # type: ignore[arg-type]
                    state=view, max_workers=getattr(config, "max_workers", None),
                )
            runs = [run_dict(s) for s in sorted(
                self._runs.values(), key=lambda s: s.started_at or 0.0)]
            cluster_runs = (current.runs.runs() if current is not None
                            and current.cluster.live else [])
            self._seq += 1
            return {"protocol": PROTOCOL, "type": "snapshot", "seq": self._seq,
                    "time": time.time(), "cluster": cluster, "clusters": len(live),
                    "runs": runs, "cluster_runs": cluster_runs}

    def tick(self) -> bool:
        """Send a snapshot if one is due (changed, and the last one is old enough)."""
        self.refresh()
        self._follow_cluster_runs()
        now = self._clock()
        with self._lock:
            since = None if self._last_sent is None else now - self._last_sent
            if since is not None and since < self.interval:
                return False
            has_content = bool(self._tracked or self._runs)
            due = self._dirty or (has_content and since is not None
                                  and since >= self.heartbeat)
            if not due:
                return False
            self._dirty = False
            self._last_sent = now
            data = self.snapshot()
        self._send(self.broadcast, data)
        return True

    def _follow_cluster_runs(self) -> None:
        """Catch up with the runs recorded on the current cluster (at most every
        :data:`~scalekit.labext.cluster_runs.POLL_S`; the scheduler is asked outside
        the lock)."""
        with self._lock:
            current = self._current_tracked()
            own = set(self._runs)
        if current is None or not current.cluster.live or not current.runs.due():
            return
        try:
            changed = current.runs.poll(own)
        except Exception:  # never a reason to stop the sidebar
            logger.debug("following the cluster's runs failed", exc_info=True)
            return
        if changed:
            with self._lock:
                self._dirty = True

    def poke(self) -> None:
        """Something changed: send at the next allowed moment."""
        with self._lock:
            self._dirty = True
        self._wake.set()

    def next_wait(self) -> float:
        """Seconds until :meth:`tick` could send again."""
        with self._lock:
            if self._last_sent is None:
                return 0.0
            return max(self.interval - (self._clock() - self._last_sent), 0.0)

    # -- comms -----------------------------------------------------------------------
    def attach(self, comm: Any, open_msg: dict[str, Any] | None = None) -> None:
        """A frontend opened a comm to :data:`TARGET`: take its intents, answer on it."""
        with self._lock:
            self._links.append(comm)
        comm.on_msg(lambda msg, c=comm: self.handle(c, msg))
        comm.on_close(lambda msg, c=comm: self.detach(c))
        content = open_msg.get("content") if isinstance(open_msg, Mapping) else None
        data = content.get("data") if isinstance(content, Mapping) else None
        shaped = open_msg is None or (isinstance(content, Mapping) and (
            data is None or isinstance(data, Mapping)))
        if not shaped or (data and data.get("action")):
            # an intent rides on the open, or a malformed open: either way, answer it
            self.handle(comm, open_msg)  # type: ignore[arg-type]
        else:
            self.poke()

    def detach(self, comm: Any) -> None:
        with self._lock:
            if comm in self._links:
                self._links.remove(comm)

    @property
    def links(self) -> list[Any]:
        with self._lock:
            return list(self._links)

    def handle(self, comm: Any, msg: dict[str, Any]) -> dict[str, Any]:
        """Carry out one intent from a frontend; reply on ``comm``; return the reply.

        Whatever arrives is answered: a message that is not an intent (its content or
        data not a JSON object) gets ``ok: false`` naming what was wrong, so the
        frontend's request never waits in vain.
        """
        reply: dict[str, Any] = {"protocol": PROTOCOL, "type": "reply", "request_id": None,
                                 "action": None, "ok": True, "message": ""}
        try:
            data = intent_data(msg)
            reply.update(request_id=data.get("request_id"), action=data.get("action"))
            reply["message"] = self._act(data)
        except Exception as exc:  # the session published the error notice already
            if not isinstance(exc, (ScalekitError, ValueError, TypeError)):
                logger.warning("sidebar intent %r failed", msg, exc_info=True)
            reply.update(ok=False, message=str(exc) or type(exc).__name__)
        self._send(comm, reply)
        self.poke()
        return reply

    def _act(self, data: dict[str, Any]) -> str:
        action = check_action(data)
        if action == "sync":
            return ""
        message = carry_out(self._session_for(data.get("cluster")), action, data)
        if action == "close":
            self.refresh()
        return message

    def _session_for(self, cluster_id: Any) -> Any:
        """The session an intent is for: the one it names, else the current one."""
        self.refresh()
        with self._lock:
            tracked = list(self._tracked.values())
            current = self._current_tracked()
        if current is None:
            raise UsageError("no cluster is running in this kernel; start one with "
                             "`%scalekit up`")
        if cluster_id is None:
            return current.session
        for t in tracked:
            if t.id == cluster_id:
                return t.session
        raise UsageError(f"cluster {cluster_id!r} is no longer running")

    @staticmethod
    def _send(comm: Any, data: dict[str, Any]) -> None:
        if comm is None:
            return
        try:
            comm.send(data)
        except Exception:  # a kernel shutting down must not raise from a view's channel
            logger.debug("sending on comm %r failed", comm, exc_info=True)

    # -- the pump thread -------------------------------------------------------------
    def start(self) -> LabBridge:
        """Send due snapshots from a daemon thread until :meth:`stop`."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._pump, name="scalekit-labext",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            tracked, self._tracked, self._current = list(self._tracked.values()), {}, None
        for t in tracked:
            t.unsubscribe()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.warning("scalekit sidebar snapshot failed", exc_info=True)
            # wake on events, but never send faster than the interval; look for new
            # sessions (no event announces one) at least every interval
            self._wake.wait(self.interval)
            self._wake.clear()
            wait = self.next_wait()
            if wait > 0:
                self._stop.wait(wait)
