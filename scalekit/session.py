"""The composition root: one place that wires config, backend, bus, sampler and panel.

``scalekit.cluster(...)`` returns a :class:`ClusterSession`. It is what a notebook holds:
``.scale(n)``, ``.adapt(minimum, maximum)``, ``.close()``, ``.client``, and, as the last
expression of a cell, the live cluster panel.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from scalekit.backends import ClusterBackend, TrainingHooks, make_backend
from scalekit.backends.metrics import MetricsSampler
from scalekit.config import AdaptConfig, ClusterConfig, PanelConfig
from scalekit.errors import ClusterError, ScalekitError, UsageError
from scalekit.events import AdaptChanged, ClusterSnapshot, EventBus, Notice, ScaleRequested
from scalekit.script_guard import refuse_unguarded_script_start, unguarded_script_hint
from scalekit.session_registry import (  # noqa: F401 (the registry's API, from here too)
    API,
    MAGIC,
    _unregister,
    active_sessions,
    close_all,
    current_session,
    register,
)
from scalekit.views.shown import ShownAsPanel

if TYPE_CHECKING:
    from distributed import Client

    from scalekit.widgets.cluster_panel import ClusterPanel

logger = logging.getLogger(__name__)

class ClusterSession(ShownAsPanel):
    """A running cluster with its event bus, metrics sampler and (lazily) its panel.

    Parameters
    ----------
    config : ClusterConfig
        How to start the cluster.
    panel : PanelConfig, optional
        Refresh period and history length of the live panel.
    backend : callable(TrainingHooks) -> ClusterBackend, optional
        Builds the backend instead of the one ``config.backend`` names; it is given the
        session's hooks into the fits running on the cluster.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        panel: PanelConfig | None = None,
        backend: Callable[[TrainingHooks], ClusterBackend] | None = None,
        kubernetes: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.panel_config = panel or PanelConfig.from_config()
        self.bus = EventBus()
        self._training: list[Any] = []  # controllers of fits running on this cluster
        # what the backend's adaptive scaling asks of those fits
        hooks = TrainingHooks(demand=self._training_demand, request_shrink=self._request_shrink)
        self.backend = (backend(hooks) if backend is not None
                        else make_backend(config, kubernetes, hooks=hooks))
        self.sampler = MetricsSampler(self.backend.snapshot, self.bus, self.panel_config.refresh)
        self._panel: ClusterPanel | None = None
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ClusterSession:
        """Start the cluster and the sampler; on failure nothing is left running."""
        self.bus.publish(
            ClusterSnapshot(backend=self.config.backend, status="starting",
                            requested=self.config.workers)
        )
        try:
            self.backend.start()
        except ScalekitError as exc:
            self._notify("error", str(exc))
            raise
        self.started_at = time.time()
        self.sampler.start()  # its first sample is immediate
        register(self)
        # the JupyterLab sidebar and status bar show it, also without %load_ext scalekit
        # (a no-op outside a kernel)
        from scalekit.labext import register_current

        register_current()
        return self

    def close(self) -> None:
        """Stop the sampler and close the client and the cluster (idempotent)."""
        self.sampler.stop()
        self.backend.close()
        self.bus.publish(ClusterSnapshot(backend=self.config.backend, status="closed"))
        _unregister(self)

    def __enter__(self) -> ClusterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- intents ---------------------------------------------------------------------
    def scale(self, n: int, *, source: str = "api") -> None:
        """Scale to ``n`` workers (stops adaptive scaling, as a manual count overrides it)."""
        with self._reporting():
            n = self.config.check_workers(n)
            if self._training and n < len(self.client.nthreads()):
                # a running fit would lose a rank mid-epoch: shrink at its next safe point
                if self.backend.adaptive is not None:
                    self.backend.stop_adapt()
                    self.bus.publish(AdaptChanged(source=source))
                self._request_shrink(n)
                self.bus.publish(ScaleRequested(n=n, source=source))
                self._notify("info", f"scaling down to {n} at the running fit's next "
                             "epoch boundary")
                return
            was_adaptive = self.backend.adaptive is not None
            self.backend.scale(n)
            if was_adaptive:
                self.bus.publish(AdaptChanged(source=source))
            self.bus.publish(ScaleRequested(n=n, source=source))
            self._notify("info", f"scaling to {n} worker{'s' if n != 1 else ''}")
        self.sampler.poke()

    def adapt(
        self, minimum: int | None = None, maximum: int | None = None, *, source: str = "api"
    ) -> None:
        """Let the cluster size itself between ``minimum`` and ``maximum`` workers."""
        with self._reporting():
            bounds = AdaptConfig.from_config(minimum=minimum, maximum=maximum)
            self.backend.adapt(bounds)
            self.bus.publish(
                AdaptChanged(minimum=bounds.minimum, maximum=bounds.maximum, source=source)
            )
            self._notify("info", f"adaptive: {bounds.minimum}..{bounds.maximum} workers")
        self.sampler.poke()

    def stop_adapt(self, *, source: str = "api") -> None:
        """Switch adaptive scaling off, keeping the current workers."""
        with self._reporting():
            self.backend.stop_adapt()
            self.bus.publish(AdaptChanged(source=source))
            self._notify("info", "adaptive scaling off")
        self.sampler.poke()

    # -- state -----------------------------------------------------------------------
    def attach_training(self, controller: Any) -> None:
        """A fit started on this cluster: scale-downs now wait for its safe points."""
        self._training.append(controller)

    def detach_training(self, controller: Any) -> None:
        if controller in self._training:
            self._training.remove(controller)

    def _training_demand(self) -> int | None:
        """Workers the running fits can use (None when no fit runs)."""
        demands = [c.useful_workers() for c in list(self._training)]
        return max(demands) if demands else None

    def _request_shrink(self, n: int) -> None:
        for controller in list(self._training):
            controller.request_shrink(n)

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` connected to this cluster."""
        return self.backend.client

    def ask_registry(self, op: str, **kwargs: Any) -> Any:
        """The answer of the cluster's run registry to ``op`` (``scalekit_runs_list``,
        ``scalekit_runs_events``, ...), installing it first; ``None`` where there is no
        answer. The lab sidebar lists the cluster's runs through it."""
        from scalekit.training.run_registry import ask, ensure_installed

        if self.closed:
            return None
        client = self.client
        ensure_installed(client)
        return ask(client, op, **kwargs)

    @property
    def closed(self) -> bool:
        return self.backend.closed

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.backend, "dashboard_link", None)

    @property
    def scheduler_address(self) -> str | None:
        return getattr(self.backend, "scheduler_address", None)

    def snapshot(self, fresh: bool = False) -> ClusterSnapshot:
        """The latest snapshot (``fresh=True`` asks the scheduler now)."""
        latest = None if fresh else self.bus.latest(ClusterSnapshot)
        return latest or self.backend.snapshot()

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        """Block until exactly ``n`` workers are connected."""
        deadline = time.monotonic() + timeout
        while len(self.client.nthreads()) != n:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {timeout:g}s waiting for {n} workers "
                    f"(have {len(self.client.nthreads())})"
                )
            time.sleep(0.1)
        self.sampler.poke()

    # -- display ---------------------------------------------------------------------
    @property
    def panel(self) -> ClusterPanel:
        """The live ipywidgets panel (created on first use)."""
        if self._panel is None:
            from scalekit.widgets.cluster_panel import ClusterPanel

            self._panel = ClusterPanel(
                self.bus,
                on_scale=lambda n: self.scale(n, source="panel"),
                on_adapt=lambda lo, hi: self.adapt(lo, hi, source="panel"),
                on_stop_adapt=lambda: self.stop_adapt(source="panel"),
                max_workers=self.config.max_workers,
                history=self.panel_config.history,
            )
        return self._panel

    def __repr__(self) -> str:
        from scalekit.views.cluster_render import cluster_text

        return cluster_text(self.snapshot(fresh=not self.closed))

    # -- helpers ---------------------------------------------------------------------
    def _notify(self, level: str, message: str) -> None:
        self.bus.publish(Notice(level=level, message=message))

    def _reporting(self) -> _Reporting:
        return _Reporting(self)


class _Reporting:
    """Context manager: a ScalekitError becomes an error notice, then propagates."""

    def __init__(self, session: ClusterSession) -> None:
        self.session = session

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, ScalekitError):
            self.session._notify("error", str(exc))
        return False


def cluster(
    workers: int | None = None,
    *,
    backend: str | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    max_workers: int | None = None,
    gpus: str | int | list[int | str] | None = None,
    kubernetes: Mapping[str, Any] | None = None,
    connect: str | None = None,
    **options: Any,
) -> ClusterSession:
    """Start a Dask cluster and return its :class:`ClusterSession`.

    With ``connect``, start nothing: connect to a running cluster that this session does
    not own (closing the session, or the kernel, leaves it running): ``"local"`` or
    ``"local:<name>"`` for a background cluster that ``scalekit cluster up`` started, a
    scheduler file's path, or a scheduler address. A background cluster can be scaled
    and adapted from the session; another Dask scheduler only trained on.

    Unset (``None``) arguments come from ``dask.config`` (``scalekit.cluster.*``); to
    run workers without a memory limit pass ``memory_limit="none"``. For
    ``backend="kubernetes"``, ``kubernetes={"image": ..., "namespace": ...}`` overrides
    ``scalekit.kubernetes.*`` (see docs/kubernetes.md).

    ``gpus`` starts one worker per GPU of this machine, each pinned to its GPU
    (``"auto"``: every GPU, ``N``: the first N, ``[0, 2]``: those); ``workers`` then
    defaults to the number of GPUs and scaling stops there. ``gpus="auto"`` on a
    machine without a GPU starts CPU workers and says so.

    Examples
    --------
    >>> import scalekit as sk
    >>> session = sk.cluster(workers=2)        # doctest: +SKIP
    >>> session.scale(3)                        # doctest: +SKIP
    >>> session                                 # the live panel in a notebook
    """
    refuse_unguarded_script_start()
    if _SCRIPT_SESSION and connect is None and not _SCRIPT_SESSION[-1].closed:
        # `scalekit run script.py`: the script's own cluster is the one the command made
        logger.info("sk.cluster() in a `scalekit run` script: using the command's cluster "
                    "(%s)", _SCRIPT_SESSION[-1].scheduler_address)
        return _SCRIPT_SESSION[-1]
    if connect is not None:
        given = {k: v for k, v in dict(workers=workers, backend=backend, gpus=gpus,
                                       threads_per_worker=threads_per_worker,
                                       memory_limit=memory_limit, kubernetes=kubernetes,
                                       **options).items() if v is not None}
        if given:
            raise UsageError(
                f"connect={connect!r} joins a running cluster, which keeps its own settings; "
                f"drop {', '.join(sorted(given))} (scale it with session.scale(n))")
        return _connect(connect, max_workers)
    config = ClusterConfig.from_config(
        workers=workers,
        backend=backend,
        threads_per_worker=threads_per_worker,
        memory_limit=memory_limit,
        max_workers=max_workers,
        gpus=gpus,
        **options,
    )
    notice = ""
    if config.gpus is not None:
        from scalekit.backends.gpus import gpu_cluster_config, visible_gpus

        config, notice = gpu_cluster_config(config, visible_gpus(), workers=workers,
                                            threads=threads_per_worker, max_workers=max_workers)
    session = ClusterSession(config, kubernetes=kubernetes)
    if notice:
        session._notify("info", notice)
        logger.info(notice)
    try:
        return session.start()
    except ClusterError as exc:
        hint = unguarded_script_hint()
        if hint and config.backend == "local" and config.processes:
            raise ClusterError(f"{str(exc).rstrip('.')}. {hint}") from exc
        raise


def _connect(connect: str, max_workers: int | None) -> ClusterSession:
    from scalekit.backends.background import (
        ConnectedBackend,
        connected_config,
        resolve_connect,
    )

    address, _ = resolve_connect(connect)
    found = connected_config(address)
    config = found or ClusterConfig.from_config(workers=1)
    config = config.replace(workers=1, **({"max_workers": max_workers} if max_workers else {}))
    session = ClusterSession(config, backend=lambda hooks: ConnectedBackend(
        config, address, steerable=found is not None, hooks=hooks))
    return session.start()


_SCRIPT_SESSION: list[ClusterSession] = []  # set while `scalekit run` runs a script


@contextlib.contextmanager
def serving_scripts(session: ClusterSession, *, detach: bool = False
                    ) -> Iterator[ClusterSession]:
    """While this is active, ``sk.cluster()`` returns ``session`` instead of starting a
    cluster (``scalekit run``: a notebook's code as a batch job, with no edits); with
    ``detach``, the script's fits run on the cluster (``scalekit.training.detach``)."""
    import dask.config

    _SCRIPT_SESSION.append(session)
    try:
        with dask.config.set({"scalekit.training.detach": detach}):
            yield session
    finally:
        _SCRIPT_SESSION.remove(session)
