"""The run registry on the cluster, and where detached fits run.

A scheduler plugin (:class:`RunRegistry`) records every fit on the cluster (detached or
not): who started it, what it trains, where it stands, its checkpoint folder, and a
bounded log of its events, so any kernel or the command line can list the runs, attach
to one, fetch its fitted net, or cancel it.

**Detached fits run in the scheduler's process**, in a thread of their own with a
``Client`` of their own: the scheduler is the one process whose life is the cluster's.
A controller running as a task on a worker would be subject to the very elasticity it
manages (a worker may be scaled away, killed or preempted), and the notebook's kernel
may go away at any time; neither holds a long fit. The controller is exactly the one a
notebook runs (:class:`~scalekit.training.controller.TrainingController`): elasticity,
checkpoints and recovery are the same. Its events go to the record's log, and, for a
fit with a checkpoint folder, to ``events.jsonl`` next to its checkpoints.

The handlers (``scalekit_runs_*``) take and return plain data; :func:`ensure_installed`
and :func:`ask` are how a client reaches them (:mod:`scalekit.remote_runs` builds the
public functions on them, the lab sidebar lists the cluster's runs with them).
"""

from __future__ import annotations

import collections
import dataclasses
import getpass
import json
import logging
import socket
import threading
import time
import weakref
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger(__name__)

NAME = "scalekit-runs"
LOG_LENGTH = 5000  # events kept per run (the newest)
ENDED = ("finished", "failed", "cancelled")


def owner() -> str:
    """Who starts a run: the OS user on this host (``SCALEKIT_OWNER`` overrides it, e.g.
    with a Kubernetes identity)."""
    import os

    return os.environ.get("SCALEKIT_OWNER") or f"{getpass.getuser()}@{socket.gethostname()}"


# -- the client's side: install it, ask it --------------------------------------------------

_INSTALLED: weakref.WeakSet[Any] = weakref.WeakSet()  # clients whose scheduler has it


def ensure_installed(client: Any) -> None:
    """Install the registry on ``client``'s scheduler, once per client: the plugin is
    idempotent, so a scheduler that has it keeps its records. (Probing with an
    operation the scheduler may not know would log a warning with a traceback there,
    which a local cluster prints into the notebook.)"""
    if client in _INSTALLED:
        return
    try:
        client.register_plugin(RunRegistry())
    except Exception as exc:  # e.g. scalekit is not installed where the scheduler runs
        logger.debug("could not install the run registry: %s", exc)
        return
    _INSTALLED.add(client)


def ask(client: Any, op: str, **kwargs: Any) -> Any:
    """The scheduler's answer to the registry operation ``op`` (``scalekit_runs_*``);
    ``None`` where it gave none (no registry, a scheduler going away)."""
    try:
        return client.sync(getattr(client.scheduler, op), **kwargs)
    except Exception as exc:
        logger.debug("%s: %s", op, exc)
        return None


@dataclasses.dataclass
class RunRecord:
    """One run as the registry knows it (``to_dict`` is what clients get)."""

    run_id: str
    owner: str
    net: str
    strategy: str
    detached: bool
    checkpoint: str | None = None
    state: str = "starting"  # starting | running | finished | failed | cancelled
    epoch: int = 0
    max_epochs: int = 0
    world_size: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    message: str = ""
    events: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=LOG_LENGTH))
    seen: int = 0  # events ever logged (the log keeps the last LOG_LENGTH)
    result: bytes | None = None  # a detached run's fitted net, pickled
    controller: Any = None  # a detached run's TrainingController

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("events", "result", "controller")} | {
                    "has_result": self.result is not None}

    def note(self, event: dict[str, Any]) -> None:
        """Log an event (a dict from ``Event.to_dict``) and follow its news."""
        self.events.append(event)
        self.seen += 1
        kind = event.get("type")
        if kind == "RunStarted":
            self.state, self.max_epochs = "running", int(event["max_epochs"])
            self.world_size, self.epoch = int(event["world_size"]), int(event["start_epoch"])
        elif kind == "EpochEnded":
            self.epoch, self.world_size = int(event["epoch"]), int(event["world_size"])
        elif kind == "Resized":
            self.world_size = int(event["new"])
        elif kind == "Recovered":
            self.world_size = int(event["world_size"])
        elif kind == "RunFinished":
            self.state, self.ended = str(event["status"]), time.time()
            self.epoch, self.message = int(event["epochs"]), str(event.get("message", ""))


class RunRegistry(SchedulerPlugin):
    """The scheduler plugin: the records, and the handlers clients call."""

    name = NAME
    idempotent = True  # registering it again keeps the scheduler's records

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.lock = threading.Lock()
        self.scheduler: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())  # sent to the scheduler empty: the records live there

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update({
            "scalekit_runs_list": self.list,
            "scalekit_runs_record": self.record,
            "scalekit_runs_events": self.events,
            "scalekit_runs_log": self.log,
            "scalekit_runs_submit": self.submit,
            "scalekit_runs_cancel": self.cancel,
            "scalekit_runs_result": self.result,
        })

    # -- handlers (plain data in and out) -------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.to_dict() for r in self.runs.values()]

    def record(self, run: dict[str, Any]) -> dict[str, Any]:
        """A run that a kernel drives (not detached) announces itself."""
        known = {f.name for f in dataclasses.fields(RunRecord)} - {"events", "result",
                                                                    "controller", "seen"}
        with self.lock:
            rec = self.runs.get(run["run_id"]) or RunRecord(
                **{k: v for k, v in run.items() if k in known})
            self.runs[rec.run_id] = rec
            return rec.to_dict()

    def log(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """Events of a run a kernel drives."""
        with self.lock:
            rec = self.runs.get(run_id)
            if rec is not None:
                for event in events:
                    rec.note(event)

    def events(self, run_id: str, since: int = 0) -> dict[str, Any]:
        """The run's record and its events from number ``since`` on (as many as the
        bounded log still holds)."""
        with self.lock:
            rec = self.runs.get(run_id)
            if rec is None:
                return {"run": None, "events": [], "next": since}
            first = rec.seen - len(rec.events)  # the number of the oldest one kept
            kept = list(rec.events)[max(0, since - first):]
            return {"run": rec.to_dict(), "events": kept, "next": rec.seen}

    def result(self, run_id: str) -> bytes | None:
        with self.lock:
            rec = self.runs.get(run_id)
            return None if rec is None else rec.result

    def cancel(self, run_id: str, who: str, force: bool = False) -> dict[str, Any]:
        with self.lock:
            rec = self.runs.get(run_id)
            if rec is None:
                return {"ok": False, "error": f"no run {run_id!r} on this cluster"}
            if rec.owner != who and not force:
                return {"ok": False, "error": (
                    f"run {run_id} belongs to {rec.owner}, not {who}; cancel(force=True) "
                    "ends it anyway")}
            if rec.state in ENDED:
                return {"ok": False, "error": f"run {run_id} has {rec.state} already"}
            if not rec.detached:
                rec.state = "cancelling"  # the kernel that drives it sees this and stops
                return {"ok": True}
            controller = rec.controller
        if controller is not None:
            controller.cancel()
        return {"ok": True}

    def submit(self, payload: bytes) -> dict[str, Any]:
        """Start a detached fit here (``payload``: what :mod:`scalekit.remote_runs`
        packs); returns its record."""
        import cloudpickle

        job = cloudpickle.loads(payload)
        net = job["net"] = cloudpickle.loads(job["net"])
        rec = RunRecord(run_id=job["run_id"], owner=job["owner"], net=type(net).__name__,
                        strategy=str(job["options"].get("strategy", "ddp")), detached=True,
                        checkpoint=job.get("checkpoint_url"))
        with self.lock:
            if rec.run_id in self.runs:
                return {"error": f"a run {rec.run_id!r} exists already"}
            self.runs[rec.run_id] = rec
        thread = threading.Thread(target=self._run_detached, args=(rec, job),
                                  name=f"scalekit-detached-{rec.run_id}", daemon=True)
        thread.start()
        return rec.to_dict()

    # -- a detached fit ---------------------------------------------------------------------
    def _run_detached(self, rec: RunRecord, job: dict[str, Any]) -> None:
        from distributed import Client

        from scalekit.config import CheckpointConfig, TrainConfig
        from scalekit.events import EventBus
        from scalekit.training.controller import TrainingController
        from scalekit.training.rank import dumps_by_value

        bus = EventBus()
        writer = _EventFile(rec.checkpoint)

        def on_event(event: Any) -> None:
            data = event.to_dict()
            with self.lock:
                rec.note(data)
            writer.add(data)

        bus.subscribe(on_event, replay=False)
        client = None
        try:
            client = Client(self.scheduler.address,
                            security=_client_security(self.scheduler.security),
                            set_as_default=False)
            options = dict(job["options"])
            controller = TrainingController(
                client, job["net"], job["X"], job["y"], bus=bus, run_id=rec.run_id,
                config=TrainConfig(**job["config"]),
                checkpoint_config=CheckpointConfig(**job["checkpoint_config"]), **options)
            with self.lock:
                rec.controller = controller
            net = controller.fit()
            result = dumps_by_value(net)
            with self.lock:
                rec.result = result
        except BaseException as exc:  # the log has RunFinished(failed/cancelled) already
            logger.warning("detached run %s ended: %s: %s", rec.run_id, type(exc).__name__,
                           exc)
            with self.lock:
                if rec.state not in ENDED:
                    rec.state, rec.ended = "failed", time.time()
                    rec.message = f"{type(exc).__name__}: {exc}"
        finally:
            writer.flush()
            with self.lock:
                rec.controller = None
            if client is not None:
                client.close()


def _client_security(security: Any) -> Any:
    """The scheduler's own TLS identity as a client's (a detached fit's client connects
    to the scheduler it runs in). Its certificate is the cluster CA's, valid for client
    authentication too (see backends/kube_security.py); without TLS, as it is."""
    cert = getattr(security, "tls_scheduler_cert", None)
    if not cert:
        return security
    from distributed.security import Security

    return Security(tls_ca_file=security.tls_ca_file, tls_client_cert=cert,
                    tls_client_key=security.tls_scheduler_key,
                    require_encryption=security.require_encryption)


class _EventFile:
    """A detached run's log next to its checkpoints (``events.jsonl``), rewritten at the
    moments that matter (epochs, resizes, recoveries, the end), bounded like the log."""

    MOMENTS = ("RunStarted", "EpochEnded", "Resized", "Recovered", "RunFinished",
               "CheckpointSaved")

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.lines: collections.deque = collections.deque(maxlen=LOG_LENGTH)

    def add(self, event: dict[str, Any]) -> None:
        self.lines.append(json.dumps(event, default=str))
        if event.get("type") in self.MOMENTS:
            self.flush()

    def flush(self) -> None:
        if not self.url or not self.lines:
            return
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.url)
            fs.makedirs(path, exist_ok=True)
            with fs.open(f"{path.rstrip('/')}/events.jsonl", "w") as f:
                f.write("\n".join(self.lines) + "\n")
        except Exception as exc:  # the log on the scheduler is the one that counts
            logger.debug("could not write the event log at %s: %s", self.url, exc)
