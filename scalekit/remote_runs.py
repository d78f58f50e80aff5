"""Runs on the cluster, from any kernel: ``sk.fit(..., detach=True)``, ``sk.runs()``,
``sk.attach(run_id)``.

The cluster keeps a registry of its runs (:mod:`scalekit.training.run_registry`, a
scheduler plugin installed on first use). A detached fit runs there, not in this kernel:
closing the notebook, losing the connection or restarting the kernel leaves it
training. :class:`AttachedRun` follows a run from any kernel: it rebuilds the run's
events from the cluster's log (the panel draws from them as from a local run), goes on
live, fetches the fitted net when the run has finished, and cancels it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from scalekit.errors import TrainingError, UsageError
from scalekit.events import Event, EventBus, RunFinished, event_from_dict
from scalekit.training import run_registry
from scalekit.views.shown import ShownAsPanel

if TYPE_CHECKING:
    from distributed import Client

    from scalekit.widgets.training_panel import TrainingPanel

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often an attached run asks the cluster for news (the panel's cap)
ENDED = ("finished", "failed", "cancelled")


# -- the registry on the cluster ---------------------------------------------------------------


ensure_registry = run_registry.ensure_installed
_call = run_registry.ask


def _registry(client: Client, op: str, **kwargs: Any) -> Any:
    ensure_registry(client)
    found = _call(client, op, **kwargs)
    if found is None and op not in ("scalekit_runs_result", "scalekit_runs_log"):
        raise UsageError(
            f"the cluster's run registry did not answer {op}: is scalekit (this version) "
            "installed where the scheduler runs?")
    return found


# -- a fit the kernel drives, recorded on the cluster ----------------------------------------


class RunRecorder:
    """Records a fit this kernel drives in the cluster's registry and forwards its events
    (in batches, every :data:`POLL_S`), so other kernels and the command line see it; a
    cancel from elsewhere reaches the fit through it."""

    def __init__(self, client: Client, controller: Any, bus: EventBus, owner: str) -> None:
        self.client = client
        self.controller = controller
        self.run_id = controller.run_id
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._done = threading.Event()
        try:
            _registry(client, "scalekit_runs_record", run={
                "run_id": self.run_id, "owner": owner, "net": type(controller.net).__name__,
                "strategy": controller.strategy.name, "detached": False,
                "checkpoint": getattr(controller.checkpoints, "url", None)})
        except Exception as exc:  # never a reason to stop a fit
            logger.info("run %s is not recorded on the cluster: %s", self.run_id, exc)
            return
        self._unsubscribe = bus.subscribe(self._note, replay=False)
        threading.Thread(target=self._forward, name=f"scalekit-record-{self.run_id}",
                         daemon=True).start()

    def _note(self, event: Event) -> None:
        if getattr(event, "run_id", None) != self.run_id:
            return
        with self._lock:
            self._pending.append(event.to_dict())
        if isinstance(event, RunFinished):
            self._unsubscribe()
            # on the controller's thread, before the fit returns: a list of the cluster's
            # runs taken right after sk.fit reads it as ended
            self._flush()
            self._done.set()

    def _flush(self) -> None:
        with self._send_lock:  # batches reach the registry in order
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                _call(self.client, "scalekit_runs_log", run_id=self.run_id, events=batch)

    def _forward(self) -> None:
        while True:
            ended = self._done.wait(POLL_S)
            self._flush()
            if ended:
                return
            news = _call(self.client, "scalekit_runs_events", run_id=self.run_id,
                         since=1 << 62)
            if news and (news.get("run") or {}).get("state") == "cancelling":
                self.controller.cancel()  # someone cancelled it from another kernel


# -- detached fits -----------------------------------------------------------------------------


def submit(client: Client, net: Any, X: Any, y: Any, *, run_id: str, owner: str,
           config: Any, checkpoint_config: Any, options: dict[str, Any],
           checkpoint_url: str | None) -> None:
    """Start a detached fit on the cluster (the net travels by value)."""
    import dataclasses

    import cloudpickle

    from scalekit.training.rank import dumps_by_value

    # the net as bytes pickled by value (skorch's own pickling would send a notebook's
    # module class by reference, which the scheduler cannot import)
    job = {"run_id": run_id, "owner": owner, "net": dumps_by_value(net),
           "X": X, "y": y, "options": options, "config": dataclasses.asdict(config),
           "checkpoint_config": dataclasses.asdict(checkpoint_config),
           "checkpoint_url": checkpoint_url}
    found = _registry(client, "scalekit_runs_submit", payload=cloudpickle.dumps(job))
    if "error" in found:
        raise UsageError(found["error"])


class AttachedRun(ShownAsPanel):
    """A run on the cluster, followed from this kernel (``sk.attach`` or a detached fit).

    Like a local :class:`~scalekit.fitting.TrainingRun`: ``events``, ``status``,
    ``wait()``, ``cancel()``, and the live panel as the last expression of a cell.
    """

    def __init__(self, client: Client, run_id: str, *, owner: str) -> None:
        self.client = client
        self.run_id = run_id
        self.owner = owner
        self.bus = EventBus()
        self.events: list[Event] = []
        self.record: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._net: Any = None
        self._next = 0
        self._ended = threading.Event()
        self._panel: TrainingPanel | None = None
        self._poll()  # the log so far, before the panel draws
        if self.record.get("run_id") is None:
            raise UsageError(f"no run {run_id!r} on this cluster; sk.runs() lists them")
        threading.Thread(target=self._follow, name=f"scalekit-attach-{run_id}",
                         daemon=True).start()

    # -- news from the cluster --------------------------------------------------------------
    def _poll(self) -> None:
        news = _registry(self.client, "scalekit_runs_events", run_id=self.run_id,
                         since=self._next)
        if news.get("run") is None:
            return
        self.record = news["run"]
        for data in news["events"]:
            try:
                event = event_from_dict(data)
            except (ValueError, TypeError):
                continue  # an event of a newer scalekit: skip it
            self.events.append(event)
            self.bus.publish(event)
        self._next = int(news["next"])
        if self.record.get("state") in ENDED:
            self._ended.set()

    def _follow(self) -> None:
        while not self._ended.wait(POLL_S):
            try:
                self._poll()
            except Exception as exc:  # the cluster went away: say so once, stop
                self.error = exc
                self._ended.set()

    # -- what a user does ---------------------------------------------------------------------
    @property
    def status(self) -> str:
        state = self.record.get("state", "starting")
        return "running" if state in ("starting", "cancelling") else state

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    @property
    def report(self) -> Any:
        from scalekit.events import TrainingReport

        found = [e for e in self.events if isinstance(e, TrainingReport)]
        return found[-1] if found else None

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the run ends; return its fitted net (fetched from the cluster) or
        raise its error."""
        if not self._ended.wait(timeout):
            raise TimeoutError(f"run {self.run_id} still running after {timeout:g}s")
        if self.error is not None:
            raise self.error
        state = self.record.get("state")
        if state != "finished":
            raise TrainingError(f"run {self.run_id} {state}: {self.record.get('message', '')}")
        return self.net

    result = wait

    @property
    def net(self) -> Any:
        """The fitted net (a finished detached run's; ``None`` before, or for a run that a
        kernel drove: that kernel holds it)."""
        if self._net is None and self.record.get("has_result"):
            import cloudpickle

            payload = _call(self.client, "scalekit_runs_result", run_id=self.run_id)
            if payload:
                self._net = cloudpickle.loads(payload)
        return self._net

    def cancel(self, force: bool = False) -> None:
        """End the run for everyone attached to it (only its owner may, unless
        ``force``)."""
        answer = _registry(self.client, "scalekit_runs_cancel", run_id=self.run_id,
                           who=self.owner, force=force)
        if not answer.get("ok"):
            raise UsageError(answer.get("error", "the run could not be cancelled"))

    @property
    def panel(self) -> TrainingPanel:
        if self._panel is None:
            from scalekit.widgets.training_panel import TrainingPanel

            self._panel = TrainingPanel(self.bus, run_id=self.run_id, events=self.events)
        return self._panel

    def __repr__(self) -> str:
        r = self.record
        return (f"<run {self.run_id} of {r.get('owner')}: {r.get('net')} "
                f"{r.get('state')}, epoch {r.get('epoch')}/{r.get('max_epochs')}, "
                f"{r.get('world_size')} workers>")


# -- listing ------------------------------------------------------------------------------


class RunTable(list):
    """The cluster's runs (a list of records), shown as a table."""

    COLUMNS = ("run_id", "owner", "net", "strategy", "state", "epoch", "max_epochs",
               "world_size", "detached", "checkpoint", "started", "ended")

    def _rows(self) -> list[list[str]]:
        def cell(run: dict[str, Any], key: str) -> str:
            value = run.get(key)
            if key in ("started", "ended") and value:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))
            return "" if value is None else str(value)

        return [[cell(run, k) for k in self.COLUMNS] for run in self]

    def __str__(self) -> str:
        if not self:
            return "no runs on this cluster"
        rows = [list(self.COLUMNS), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.COLUMNS))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                         for r in rows)

    def _repr_html_(self) -> str:
        from html import escape

        if not self:
            return "<p>no runs on this cluster</p>"
        head = "".join(f"<th>{escape(c)}</th>" for c in self.COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>"
                       for row in self._rows())
        return f"<table class='scalekit-runs'><tr>{head}</tr>{body}</table>"


def list_runs(client: Client) -> RunTable:
    runs = _registry(client, "scalekit_runs_list") or []
    return RunTable(sorted(runs, key=lambda r: r.get("started") or 0))


# -- the public functions (sk.runs, sk.attach) ------------------------------------------------


def runs(cluster: Any = None) -> RunTable:
    """The runs recorded on the cluster (detached or not, any owner), oldest first.

    Parameters
    ----------
    cluster : ClusterSession or distributed.Client, optional
        Default: the current session (``sk.cluster(connect="local")`` joins a background
        cluster from a fresh kernel).
    """
    return list_runs(_client_of(cluster))


def attach(run_id: str, cluster: Any = None) -> AttachedRun:
    """Follow the run ``run_id`` from this kernel: its panel rebuilds from the cluster's
    log and goes on live; ``wait()`` returns a detached run's fitted net."""
    from scalekit.training.run_registry import owner

    return AttachedRun(_client_of(cluster), run_id, owner=owner())


def _client_of(cluster: Any) -> Client:
    if cluster is None:
        from scalekit.session import current_session

        cluster = current_session()
        if cluster is None:
            raise UsageError("no cluster: join one first, e.g. sk.cluster(connect='local'), "
                             "or pass cluster=<session or distributed.Client>")
    client = getattr(cluster, "client", cluster)
    if not hasattr(client, "scheduler"):
        raise UsageError(f"cluster must be a scalekit session or a distributed.Client, got "
                         f"{type(cluster).__name__}")
    return client


def check_detachable(session: Any) -> None:
    """A detached fit needs a cluster that outlives this kernel."""
    backend = getattr(session, "backend", None)
    name = getattr(backend, "name", "")
    keep = getattr(getattr(backend, "kube", None), "keep_on_shutdown", False)
    if name == "local" or (name == "kubernetes" and not keep):
        raise UsageError(
            "detach=True needs a cluster that outlives this kernel, and this one closes "
            "with it. Start one in the background (`scalekit cluster up`, then "
            "sk.cluster(connect='local')), or on Kubernetes keep it "
            "(kubernetes={'keep_on_shutdown': True}). Nothing was started.")
