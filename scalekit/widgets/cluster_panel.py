"""The live cluster panel: a thin ipywidgets view over the event bus.

Like tqdm's notebook bar over the plain tqdm, the panel owns no state of its own that
matters: it folds the events it receives (:class:`~scalekit.events.ClusterSnapshot`,
:class:`~scalekit.events.ScaleRequested`, :class:`~scalekit.events.AdaptChanged`,
:class:`~scalekit.events.Notice`) into a :class:`~scalekit.views.cluster_state.
ClusterState`, draws it with :mod:`scalekit.views.cluster_render`, and turns what the
user does into calls of injected callables (``on_scale``, ``on_adapt``,
``on_stop_adapt``). It never imports a backend.

Threading: bus events arrive on the metrics thread (≤ 2 Hz) or on whichever thread
published them; user changes arrive on the kernel thread. Values the panel sets itself
are marked with a *thread-local* guard, so a programmatic update on one thread never
swallows a real user change arriving on another, and callbacks are never called with a
lock held (they publish on the bus themselves).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets

from scalekit.events import AdaptChanged, ClusterSnapshot, Event, EventBus, Notice, ScaleRequested
from scalekit.views import cluster_render
from scalekit.views.cluster_state import ClusterState
from scalekit.views.html import notice_html
from scalekit.widgets.view import WIDGET_VIEW, EventView  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


def _track_width(max_workers: int) -> str:
    """A slider's width: about 24 px a worker past its label, 280-520 px in all (the
    default track gave 16 workers 124 px)."""
    return f"{min(max(100 + 24 * max_workers, 280), 520)}px"


def _default_bounds(max_workers: int) -> tuple[int, int]:
    """Adaptive bounds shown before the user picks any: the configured ones, clamped."""
    try:
        from scalekit.config import AdaptConfig

        bounds = AdaptConfig.from_config()
        lo, hi = bounds.minimum, bounds.maximum
    except Exception:  # a broken user config must not break the panel
        lo, hi = 1, 4
    hi = min(max(hi, 1), max_workers)
    return min(max(lo, 0), hi), hi


class ClusterPanel(EventView):
    """Worker slider, adaptive bounds, per-worker bars and a status line for one cluster.

    Parameters
    ----------
    bus : EventBus
        Where the cluster's events come from; the panel subscribes at once (the bus
        replays the current state).
    on_scale : callable
        ``on_scale(n)``: the user asked for ``n`` workers.
    on_adapt : callable
        ``on_adapt(minimum, maximum)``: the user switched adaptive scaling on or moved
        its bounds.
    on_stop_adapt : callable
        ``on_stop_adapt()``: the user switched adaptive scaling off.
    max_workers : int
        Upper end of the worker slider and of the adaptive bounds: the configured
        ``scalekit.cluster.max-workers``. The sliders' tracks grow with it, so that
        each worker is a step a mouse can hit.
    history : int
        How many snapshots the CPU/memory picture keeps.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The root widget.
    workers_slider : ipywidgets.IntSlider
        Requested worker count; disabled (showing the actual count) while adaptive.
    adaptive_toggle : ipywidgets.ToggleButton
        Adaptive scaling on/off.
    adaptive_range : ipywidgets.IntRangeSlider
        Adaptive ``(minimum, maximum)``.
    header_html, dashboard_html, totals_html, workers_html, history_html, status_html
        The read-only parts (``ipywidgets.HTML``); the header ends with a separator
        when the dashboard link follows it, the totals hold a warning when the memory
        limits overcommit the machine, the status line the latest notice while it holds
        (:attr:`ClusterState.status_line`).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        on_scale: Callable[[int], Any],
        on_adapt: Callable[[int, int], Any],
        on_stop_adapt: Callable[[], Any],
        max_workers: int = 16,
        history: int = 120,
    ) -> None:
        super().__init__()
        self.bus = bus
        self.max_workers = max(int(max_workers), 1)
        self._on_scale = on_scale
        self._on_adapt = on_adapt
        self._on_stop_adapt = on_stop_adapt
        self._local = threading.local()  # .quiet > 0 while this thread sets values itself
        self.state = ClusterState(history=history)  # the view-model: latest events, history
        self._intent_time = 0.0  # snapshots older than the last intent don't move controls
        self.adaptive = False
        self._controls_on = True  # False while the cluster is starting or closed
        self.cluster_closed = False
        self.disposed = False

        self.header_html = widgets.HTML(cluster_render.header_html(None))
        self.dashboard_html = widgets.HTML("")
        track = _track_width(self.max_workers)
        self.workers_slider = widgets.IntSlider(
            value=1, min=1, max=self.max_workers, step=1, description="Workers",
            continuous_update=False, tooltip="Requested number of workers",
            layout=widgets.Layout(width=track),
        )
        self.adaptive_toggle = widgets.ToggleButton(
            value=False, description="Adaptive", icon="magic",
            tooltip="Let the cluster size itself between min and max",
        )
        self.adaptive_range = widgets.IntRangeSlider(
            value=_default_bounds(self.max_workers), min=0, max=self.max_workers, step=1,
            description="min / max", continuous_update=False,
            layout=widgets.Layout(width=track),
        )
        self.totals_html = widgets.HTML("")
        self.workers_html = widgets.HTML("")
        self.history_html = widgets.HTML("")
        self.status_html = widgets.HTML("")
        self.widget = widgets.VBox([
            widgets.HBox([self.header_html, self.dashboard_html]),
            widgets.HBox([self.workers_slider, self.adaptive_toggle, self.adaptive_range],
                         layout=widgets.Layout(flex_flow="row wrap")),
            self.totals_html,
            widgets.HBox([self.workers_html, self.history_html],
                         layout=widgets.Layout(flex_flow="row wrap", grid_gap="1em")),
            self.status_html,
        ])
        for w, css in (
            (self.widget, "scalekit-cluster-panel"),
            (self.workers_slider, "scalekit-workers-slider"),
            (self.adaptive_toggle, "scalekit-adaptive-toggle"),
            (self.adaptive_range, "scalekit-adaptive-range"),
            (self.status_html, "scalekit-status-line"),
        ):
            w.add_class(css)

        self.workers_slider.observe(self._user_scaled, names="value")
        self.adaptive_toggle.observe(self._user_toggled, names="value")
        self.adaptive_range.observe(self._user_bounds, names="value")
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._on_event)

    # -- display ---------------------------------------------------------------------
    def _fallbacks(self) -> dict[str, str]:
        snapshot = self.snapshot
        status = ("info", "cluster closed") if self.cluster_closed else self.state.status_line
        return {
            "text/plain": cluster_render.cluster_text(snapshot) if snapshot else repr(self),
            "text/html": (
                cluster_render.cluster_html(snapshot, status=status) if snapshot
                else f"<div>{cluster_render.header_html(None)}</div>"
            ),
        }

    def __repr__(self) -> str:
        state = "closed" if self.cluster_closed else f"{self.workers_slider.value} workers"
        return f"<ClusterPanel {state}>"

    @property
    def snapshot(self) -> ClusterSnapshot | None:
        """The last snapshot drawn."""
        return self.state.snapshot

    @property
    def status(self) -> str:
        """The status line's HTML."""
        return self.status_html.value

    # -- bus events (any thread) ------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if self.cluster_closed or self.disposed:
            return
        self.state.apply(event)
        if isinstance(event, ClusterSnapshot):
            self._show_snapshot(event)
        elif isinstance(event, ScaleRequested):
            self._intent_time = max(self._intent_time, event.time)
            self._follow(event.n)
        elif isinstance(event, AdaptChanged):
            self._intent_time = max(self._intent_time, event.time)
            self._show_adaptive(event.enabled, event.minimum, event.maximum)
        if not self.cluster_closed:
            self._show_status()

    def _show_status(self) -> None:
        """The notice while it holds: "scaling to 3" goes once the 3 workers are there,
        a run's "recovering" once it trains again; an error stays until the next one."""
        line = self.state.status_line
        self._push(self.status_html, "value", notice_html(*line) if line else "")

    def _show_snapshot(self, s: ClusterSnapshot) -> None:
        self._push(self.header_html, "value", cluster_render.header_html(s, link=False))
        if s.status == "closed":
            self._shut()
            return
        self._enable(s.status == "running")
        if self.adaptive:
            self._follow(s.n_workers)  # adaptive decides: show what is there
        elif s.requested is not None and s.time >= self._intent_time:
            self._follow(s.requested)
        state = self.state
        history = cluster_render.history_html(state.cpu_history, state.memory_history,
                                              span_s=state.history_span_s)
        totals = cluster_render.totals_html(s) + cluster_render.memory_warning_html(s)
        self._push(self.totals_html, "value", totals)
        self._push(self.workers_html, "value", cluster_render.workers_html(s))
        self._push(self.history_html, "value", history)
        self._push(self.dashboard_html, "value", cluster_render.dashboard_html(s.dashboard_link))

    def _show_adaptive(self, enabled: bool, lo: int | None, hi: int | None) -> None:
        self.adaptive = enabled
        self._push(self.adaptive_toggle, "value", enabled)
        if enabled and lo is not None and hi is not None:
            hi = min(hi, self.max_workers)
            self._push(self.adaptive_range, "value", (min(lo, hi), hi))
        self._push(self.workers_slider, "disabled", enabled or not self._controls_on)
        snapshot = self.state.snapshot
        if enabled and snapshot is not None and snapshot.status == "running":
            self._follow(snapshot.n_workers)

    def _follow(self, n: int) -> None:
        """Move the worker slider to ``n`` without calling ``on_scale``."""
        self._push(self.workers_slider, "value", min(max(int(n), 1), self.max_workers))

    def _enable(self, on: bool) -> None:
        self._controls_on = on
        self._push(self.workers_slider, "disabled", not on or self.adaptive)
        self._push(self.adaptive_toggle, "disabled", not on)
        self._push(self.adaptive_range, "disabled", not on)

    def _shut(self) -> None:
        """The cluster is closed: freeze the controls and stop listening."""
        self.cluster_closed = True
        self._controls_on = False
        for control in (self.workers_slider, self.adaptive_toggle, self.adaptive_range):
            self._push(control, "disabled", True)
        self._push(self.totals_html, "value", "")
        self._push(self.workers_html, "value", "")
        self._push(self.history_html, "value", "")  # no stale CPU figure in a legend
        self._push(self.dashboard_html, "value", "")
        self._push(self.status_html, "value", notice_html("info", "cluster closed"))
        self._stop_listening()
        self.finalize()  # saved notebooks keep this last state as static HTML

    # -- user changes (kernel thread) -------------------------------------------------
    def _user_scaled(self, change: dict[str, Any]) -> None:
        if self._is_quiet():
            return
        if self.cluster_closed or self.adaptive:  # disabled: a stray set is put back
            self._push(self.workers_slider, "value", change["old"])
            return
        self._intent_time = time.time()
        if not self._call(self._on_scale, change["new"]):
            self._push(self.workers_slider, "value", change["old"])

    def _user_toggled(self, change: dict[str, Any]) -> None:
        if self._is_quiet():
            return
        if self.cluster_closed:
            self._push(self.adaptive_toggle, "value", change["old"])
            return
        self._intent_time = time.time()
        if change["new"]:
            ok = self._call(self._on_adapt, *self.adaptive_range.value)
        else:
            ok = self._call(self._on_stop_adapt)
        if ok:
            self._show_adaptive(change["new"], *self.adaptive_range.value)
        else:
            self._push(self.adaptive_toggle, "value", change["old"])

    def _user_bounds(self, change: dict[str, Any]) -> None:
        if self._is_quiet() or self.cluster_closed or not self.adaptive:
            return  # bounds chosen while adaptive is off wait for the toggle
        self._intent_time = time.time()
        if not self._call(self._on_adapt, *change["new"]):
            self._push(self.adaptive_range, "value", change["old"])

    def _call(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Run a user-intent callback; on failure show why and report ``False``."""
        try:
            callback(*args)
        except Exception as exc:  # the running cluster stays as it was
            logger.warning("panel action failed: %s", exc, exc_info=True)
            # an error holds until the next notice, like the session's own
            self.state.apply(Notice(level="error", message=str(exc) or type(exc).__name__))
            self._show_status()
            return False
        return True

    # -- helpers ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        self._local.quiet = getattr(self._local, "quiet", 0) + 1
        try:
            yield
        finally:
            self._local.quiet -= 1

    def _is_quiet(self) -> bool:
        return getattr(self._local, "quiet", 0) > 0

    def _push(self, widget: widgets.Widget, name: str, value: Any) -> None:
        """Set ``widget.name`` only if it changed (each change is a comm message)."""
        if self.disposed or getattr(widget, name) == value:
            return
        with self._quiet():
            setattr(widget, name, value)
