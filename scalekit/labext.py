"""The kernel side of the JupyterLab extension: snapshots out, user intents in, over comms.

dask-labextension cannot see clusters that a kernel created: its clusters live in the
Jupyter server. scalekit's clusters live in the kernel, so the JupyterLab extension
(``extensions/``) talks to the kernel through the Jupyter comm protocol:

- **Snapshots out.** A :class:`LabBridge` subscribes to the event bus of every scalekit
  session of this process (the same bus and the same JSON-safe events the ipywidgets
  panels draw), folds the training events with the panels'
  :class:`~scalekit.views.training_state.TrainingState`, and sends a compact JSON
  snapshot of the cluster and of this kernel's training runs at most twice a second
  (:data:`MIN_INTERVAL`), and only when something changed (plus a slow heartbeat).
  Snapshots go on a kernel-side *broadcast* comm that is never opened: its ``comm_msg``
  messages travel on IOPub to every frontend of the kernel, frontends without the
  extension ignore an unknown comm id, and the extension reads them from IOPub. They
  flow from a background thread, so the status bar moves while a cell runs.
- **Intents in.** The extension opens its own comm to the target :data:`TARGET` (once
  it has seen a snapshot, so kernels without scalekit are never asked anything) and
  sends ``{"action": "scale", "n": 3}``, ``adapt`` (``minimum``, ``maximum``),
  ``stop_adapt``, ``close`` or ``sync``. The bridge calls the session's own methods
  (``scale(n, source="sidebar")`` ...) exactly as the ipywidgets panel does: one
  source of truth, no second code path. Each intent is answered on that comm with
  ``{"type": "reply", "ok": ..., "message": ...}``; a rejected value also shows as the
  session's error notice. A message that is no intent at all (its data a string, a
  list, ...) is answered too, with ``ok: false`` saying what shape was expected.

Message shapes (``protocol`` is :data:`PROTOCOL` on every message)::

    {"protocol": "scalekit/1", "type": "snapshot", "seq": 7, "time": 1.7e9,
     "cluster": {"id", "backend", "status", "workers": [...], "n_workers", "requested",
                 "totals": {..., "gpu"?}, "adaptive": {"minimum", "maximum"} | None,
                 "dashboard_link", "max_workers", "notice": {...} | None} | None,
     "clusters": 1,
     "runs": [{"run_id", "status", "epochs_done", "max_epochs", "progress", "loss",
               "loss_key", "last_checkpoint": {...} | None, "recoveries", ...}, ...]}

A worker with a GPU also carries ``"gpu": {"name", "resource", "monitored",
"utilization", "memory", "memory_total"}`` (``monitored`` false: no NVML numbers, as
without nvidia-ml-py) and the totals ``"gpu": {"workers", "monitored", "utilization",
"memory", "memory_total"}``; neither key is there on a CPU-only cluster.

Importing this module imports neither torch, ``distributed`` nor ipywidgets: sessions
are found through ``sys.modules`` (no ``scalekit.session`` imported: no cluster).
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scalekit.events import (
    AdaptChanged,
    ClusterSnapshot,
    Event,
    Notice,
    ScaleRequested,
    WorkerStats,
)

if TYPE_CHECKING:
    from scalekit.views.training_state import TrainingState

logger = logging.getLogger(__name__)

TARGET = "scalekit"
PROTOCOL = "scalekit/1"
MIN_INTERVAL = 0.5  # seconds between two snapshots: at most 2 Hz
HEARTBEAT = 5.0  # resend the last snapshot this often while there is something to show
MAX_WORKERS_SHOWN = 64  # a 500-worker cluster's snapshot stays small; totals count all
MAX_RUNS = 10  # past runs kept (the running ones always are)
SOURCE = "sidebar"  # ScaleRequested/AdaptChanged ``source`` of the extension's intents
ACTIONS = ("scale", "adapt", "stop_adapt", "close", "sync")

_ids = itertools.count(1)


# --- snapshots: pure functions of events -------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, else ``None`` (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _bytes(value: int | None) -> int | None:
    return None if value is None else int(value)


def worker_dict(w: WorkerStats) -> dict[str, Any]:
    """One worker; ``"gpu"`` only for a worker that has one (CPU workers as before)."""
    d: dict[str, Any] = {
        "name": w.name, "address": w.address, "nthreads": w.nthreads,
        "cpu": _number(w.cpu) or 0.0, "memory": int(w.memory),
        "memory_limit": int(w.memory_limit), "status": w.status,
    }
    if w.has_gpu:
        d["gpu"] = {
            "name": w.gpu_name, "resource": _number(w.gpus) or 0.0,
            "monitored": w.gpu_monitored, "utilization": _number(w.gpu_utilization),
            "memory": _bytes(w.gpu_memory), "memory_total": _bytes(w.gpu_memory_total),
        }
    return d


def _gpu_totals(snapshot: ClusterSnapshot) -> dict[str, Any] | None:
    gpus = snapshot.gpu_workers
    if not gpus:
        return None
    memory = snapshot.total_gpu_memory
    return {
        "workers": len(gpus), "monitored": any(w.gpu_monitored for w in gpus),
        "utilization": _number(snapshot.mean_gpu_utilization),
        "memory": None if memory is None else memory[0],
        "memory_total": None if memory is None else memory[1],
    }


def cluster_dict(
    snapshot: ClusterSnapshot,
    *,
    cluster_id: str,
    adapt: AdaptChanged | None = None,
    scale: ScaleRequested | None = None,
    notice: Notice | None = None,
    max_workers: int | None = None,
    max_shown: int = MAX_WORKERS_SHOWN,
) -> dict[str, Any]:
    """The cluster part of a snapshot.

    ``adapt`` and ``scale`` are the latest intents: when newer than ``snapshot`` they
    say what the cluster is about to become (adaptive bounds, requested size), so the
    views follow a click at once instead of at the next sample.
    """
    adaptive: tuple[int, int] | None = snapshot.adaptive
    if adapt is not None and adapt.time >= snapshot.time:
        adaptive = (adapt.minimum or 0, adapt.maximum) if adapt.enabled else None  # type: ignore[assignment]
    requested = snapshot.requested
    if scale is not None and scale.time >= snapshot.time:
        requested = scale.n
    # as the panel's CPU figure: percent of capacity (100 % = every thread busy)
    capacity = 100.0 * snapshot.total_threads
    cpu_percent = 100.0 * sum(w.cpu for w in snapshot.workers) / capacity if capacity else 0.0
    totals: dict[str, Any] = {
        "threads": snapshot.total_threads,
        "cpu": _number(snapshot.mean_cpu) or 0.0,
        "cpu_percent": _number(cpu_percent) or 0.0,
        "memory": snapshot.total_memory,
        "memory_limit": snapshot.total_memory_limit,
    }
    gpu = _gpu_totals(snapshot)
    if gpu is not None:  # over all workers, also those past ``max_shown``
        totals["gpu"] = gpu
    return {
        "id": cluster_id,
        "backend": snapshot.backend,
        "status": snapshot.status,
        "workers": [worker_dict(w) for w in snapshot.workers[:max_shown]],
        "n_workers": snapshot.n_workers,
        "requested": requested,
        "totals": totals,
        "adaptive": (
            None if adaptive is None
            else {"minimum": int(adaptive[0]), "maximum": int(adaptive[1])}
        ),
        "dashboard_link": snapshot.dashboard_link,
        "scheduler_address": snapshot.scheduler_address,
        "max_workers": max_workers,
        "notice": (
            None if notice is None
            else {"level": notice.level, "message": notice.message, "time": notice.time}
        ),
        "time": snapshot.time,
    }


def run_dict(state: TrainingState) -> dict[str, Any]:
    """The part of a snapshot for one run, from the panels' folded training state."""
    loss_key = state.loss_keys[0] if state.loss_keys else None
    last_row = state.rows[-1] if state.rows else {}
    loss = _number(last_row.get(loss_key)) if loss_key else None
    valid_loss = _number(last_row.get("valid_loss"))
    done = state.epochs_done - state.start_epoch
    total = (state.max_epochs - state.start_epoch) if state.max_epochs else None
    if state.status == "finished":
        progress: float | None = 1.0
    elif total:
        progress = min(max((done + state.batch_fraction) / total, 0.0), 1.0)
    else:
        progress = None
    checkpoint = state.last_checkpoint
    message = state.message.splitlines()[0][:300] if state.message else ""
    return {
        "run_id": state.run_id,
        "status": state.status,
        "epochs_done": state.epochs_done,
        "max_epochs": state.max_epochs,
        "start_epoch": state.start_epoch,
        "batch": list(state.batch) if state.batch is not None else None,
        "progress": progress,
        "loss_key": loss_key,
        "loss": loss,
        "valid_loss": valid_loss if loss_key != "valid_loss" else None,
        "world_size": state.world_size,
        "samples_per_s": _number(state.samples_per_s),
        "eta_s": _number(state.eta_s),
        "last_checkpoint": None if checkpoint is None else {
            "epoch": checkpoint.epoch, "step": checkpoint.step, "url": checkpoint.url,
            "time": checkpoint.time,
        },
        "recoveries": state.recoveries,
        "lost_steps": state.lost_steps,
        "downtime_s": _number(state.downtime_s) or 0.0,
        "peak_gpu_memory": [int(b) for b in state.peak_gpu_memory],
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "message": message,
    }


# --- the bridge ---------------------------------------------------------------------------


def _active_sessions() -> list[Any]:
    """This process's running sessions, without importing the backends when none ran."""
    module = sys.modules.get("scalekit.session")
    return list(module.active_sessions()) if module is not None else []


class _Tracked:
    """One session the bridge listens to, and the latest cluster events of its bus."""

    def __init__(self, session: Any, cluster_id: str) -> None:
        self.session = session
        self.id = cluster_id
        self.snapshot: ClusterSnapshot | None = None
        self.adapt: AdaptChanged | None = None
        self.scale: ScaleRequested | None = None
        self.notice: Notice | None = None
        self.unsubscribe: Callable[[], None] = lambda: None


class LabBridge:
    """Snapshots of this kernel's sessions and runs out, user intents in.

    Parameters
    ----------
    sessions : callable, optional
        Returns the running sessions, oldest first (default: :func:`scalekit.session.
        active_sessions` when that module is imported). The newest is "the cluster".
    broadcast : comm, optional
        Where snapshots are sent (``send(data)``); :func:`register` makes an unopened
        kernel comm. Replies go on the comm an intent came from.
    clock : callable
        Monotonic seconds, for the throttle (tests pass a fake clock).
    interval, heartbeat : float
        At most one snapshot per ``interval`` seconds; the last one again every
        ``heartbeat`` seconds while there is a cluster or a run to show.
    """

    def __init__(
        self,
        *,
        sessions: Callable[[], Iterable[Any]] = _active_sessions,
        broadcast: Any = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = MIN_INTERVAL,
        heartbeat: float = HEARTBEAT,
        max_runs: int = MAX_RUNS,
    ) -> None:
        self._sessions = sessions
        self.broadcast = broadcast
        self._clock = clock
        self.interval = max(float(interval), MIN_INTERVAL)
        self.heartbeat = heartbeat
        self.max_runs = max_runs
        self._lock = threading.RLock()
        self._tracked: dict[int, _Tracked] = {}  # id(session) -> tracked
        self._runs: dict[str, TrainingState] = {}  # run_id -> folded state, oldest first
        self._links: list[Any] = []  # comms the frontends opened
        self._dirty = True
        self._last_sent: float | None = None
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sessions and events ---------------------------------------------------------
    def refresh(self) -> None:
        """Follow sessions that started and forget those that closed."""
        try:
            current = [s for s in self._sessions() if not getattr(s, "closed", False)]
        except Exception:
            logger.debug("listing sessions failed", exc_info=True)
            return
        alive = {id(s) for s in current}
        with self._lock:
            gone = [t for key, t in self._tracked.items() if key not in alive]
            new = [s for s in current if id(s) not in self._tracked]
            for tracked in gone:
                del self._tracked[id(tracked.session)]
            for session in new:
                self._tracked[id(session)] = _Tracked(session, f"c{next(_ids)}")
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
            if isinstance(event, ClusterSnapshot):
                tracked.snapshot = event
            elif isinstance(event, AdaptChanged):
                tracked.adapt = event
            elif isinstance(event, ScaleRequested):
                tracked.scale = event
            elif isinstance(event, Notice):
                tracked.notice = event
            elif getattr(event, "run_id", None) is not None:
                self._fold_run(event)
            else:
                return
            self._dirty = True
        self._wake.set()

    def _fold_run(self, event: Event) -> None:
        from scalekit.views.training_state import TrainingState

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

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The JSON-safe snapshot of the newest cluster and of every run kept."""
        with self._lock:
            tracked = [t for t in self._tracked.values() if t.snapshot is not None
                       and t.snapshot.status != "closed"]
            newest = tracked[-1] if tracked else None
            cluster = None
            if newest is not None:
                config = getattr(newest.session, "config", None)
                cluster = cluster_dict(
                    newest.snapshot, cluster_id=newest.id, adapt=newest.adapt,  # type: ignore[arg-type]
                    scale=newest.scale, notice=newest.notice,
                    max_workers=getattr(config, "max_workers", None),
                )
            runs = [run_dict(s) for s in sorted(
                self._runs.values(), key=lambda s: s.started_at or 0.0)]
            self._seq += 1
            return {"protocol": PROTOCOL, "type": "snapshot", "seq": self._seq,
                    "time": time.time(), "cluster": cluster, "clusters": len(tracked),
                    "runs": runs}

    def tick(self) -> bool:
        """Send a snapshot if one is due (changed, and the last one is old enough)."""
        self.refresh()
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
            from scalekit.errors import ScalekitError

            if not isinstance(exc, (ScalekitError, ValueError, TypeError)):
                logger.warning("sidebar intent %r failed", msg, exc_info=True)
            reply.update(ok=False, message=str(exc) or type(exc).__name__)
        self._send(comm, reply)
        self.poke()
        return reply

    def _act(self, data: dict[str, Any]) -> str:
        from scalekit.errors import UsageError

        action = data.get("action")
        if action not in ACTIONS:
            raise UsageError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if action == "sync":
            return ""
        session = self._session_for(data.get("cluster"))
        if action == "scale":
            n = _intent_int(data, "n")
            session.scale(n, source=SOURCE)
            return f"scaling to {n} worker{'s' if n != 1 else ''}"
        if action == "adapt":
            lo = _intent_int(data, "minimum", optional=True)
            hi = _intent_int(data, "maximum", optional=True)
            session.adapt(lo, hi, source=SOURCE)
            return "adaptive scaling on"
        if action == "stop_adapt":
            session.stop_adapt(source=SOURCE)
            return "adaptive scaling off"
        session.close()  # "close"
        self.refresh()
        return "cluster closed"

    def _session_for(self, cluster_id: Any) -> Any:
        from scalekit.errors import UsageError

        self.refresh()
        with self._lock:
            tracked = list(self._tracked.values())
        if not tracked:
            raise UsageError("no cluster is running in this kernel; start one with "
                             "`%scalekit up`")
        if cluster_id is None:
            return tracked[-1].session
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
            tracked, self._tracked = list(self._tracked.values()), {}
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


def _shape(value: Any) -> str:
    """A short description of a malformed value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def intent_data(msg: Any) -> dict[str, Any]:
    """The intent a comm message carries (``msg["content"]["data"]``), shape checked.

    A message without data is an empty intent (answered "unknown action None").

    Raises
    ------
    UsageError
        The message, its ``content`` or its ``data`` is not a JSON object; the error
        names which and what arrived instead.
    """
    from scalekit.errors import UsageError

    if not isinstance(msg, Mapping):
        raise UsageError(f"malformed comm message: expected a message object, got {_shape(msg)}")
    content = msg.get("content")
    if not isinstance(content, Mapping):
        raise UsageError("malformed comm message: its content must be an object with "
                         f"'data', got {_shape(content)}")
    data = content.get("data")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UsageError("malformed intent: the comm message's data must be an object such "
                         f'as {{"action": "scale", "n": 3}}, got {_shape(data)}')
    return dict(data)


def _intent_int(data: dict[str, Any], key: str, *, optional: bool = False) -> int | None:
    from scalekit.errors import UsageError

    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise UsageError(f"{key}: expected a whole number of workers, got {value!r}")
    return int(value)


# --- registration in a kernel -------------------------------------------------------------

_BRIDGE: LabBridge | None = None
_REGISTER = threading.Lock()


def register(shell: Any, *, manager: Any = None,
             create_comm: Callable[..., Any] | None = None) -> LabBridge | None:
    """Register the comm target :data:`TARGET` in ``shell``'s kernel and start the bridge.

    Called by ``%load_ext scalekit`` (idempotent). Outside a kernel (plain IPython, a
    test's fake shell without a comm manager) it does nothing and returns ``None``.
    ``manager`` and ``create_comm`` replace the kernel's comm manager and comm factory.
    """
    global _BRIDGE
    kernel = getattr(shell, "kernel", None)
    manager = manager or getattr(kernel, "comm_manager", None)
    if manager is None or not hasattr(manager, "register_target"):
        return None
    with _REGISTER:
        if _BRIDGE is not None and manager.targets.get(TARGET) is not None:
            return _BRIDGE
        if create_comm is None:
            import comm

            create_comm = comm.create_comm
        # never opened (primary=False): no comm_open for frontends to refuse; its
        # comm_msg reach every frontend on IOPub, which the extension reads
        broadcast = create_comm(target_name=TARGET, primary=False)
        bridge = _BRIDGE if _BRIDGE is not None else LabBridge()
        bridge.broadcast = broadcast
        manager.register_target(TARGET, bridge.attach)
        _BRIDGE = bridge
    return bridge.start()


def bridge() -> LabBridge | None:
    """The bridge :func:`register` started in this process, if any."""
    return _BRIDGE


__all__ = ["LabBridge", "PROTOCOL", "TARGET", "cluster_dict", "register", "run_dict"]
