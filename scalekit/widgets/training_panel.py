"""The live training panel: a thin ipywidgets view over one run's events.

The panel folds the events of its run (and every :class:`~scalekit.events.Notice`)
into a :class:`~scalekit.views.training_state.TrainingState` and draws it with the
pure renderers of :mod:`scalekit.views.training_render`. It first replays the events
it is given (so a panel made after the run still shows everything), then follows the
bus. On sharded data a data row shows each rank's shards done/total this epoch.

Threading and throttling: events arrive on whichever thread published them (the
client's thread for training messages). Folding an event is cheap and happens at once;
drawing is coalesced: at most one redraw per ``min_interval`` seconds (by default the
one refresh cap, :data:`~scalekit.config.MIN_REFRESH_S`), with a trailing
redraw on a timer thread so the last event is always shown. The start and end of the
run, the end of an epoch, a resize, a recovery and a failed rank redraw at once (a
saved checkpoint waits like batch progress); the table and charts are rebuilt only when
the epoch rows changed, the world-size chart and timeline only when they did. Training
runs on the workers and never waits for the panel.

Once the run is over the panel draws its last state and :meth:`~scalekit.widgets.view.
EventView.finalize` turns its outputs into static HTML, so a saved notebook shows the
run when reopened (see :mod:`scalekit.widgets.view`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as widgets

from scalekit.config import MIN_REFRESH_S
from scalekit.events import (
    EpochEnded,
    Event,
    EventBus,
    Notice,
    RankStatus,
    Recovered,
    Resized,
    RunFinished,
    RunStarted,
)
from scalekit.views import timeline_render, training_render
from scalekit.views.html import escape
from scalekit.views.training_state import TrainingState
from scalekit.widgets.view import EventView

logger = logging.getLogger(__name__)

BAR_STYLES = {"running": "info", "finished": "success", "failed": "danger",
              "cancelled": "warning"}
URGENT = (EpochEnded, RunFinished, RunStarted, Resized, Recovered)


class TrainingPanel(EventView):
    """Epoch and batch progress, throughput, ranks, curves, world size and timeline, log.

    Parameters
    ----------
    bus : EventBus
        Where the run's events come from (subscribed without replay).
    run_id : str
        The run to show; events of other runs are ignored.
    events : iterable of Event
        The run's past events, replayed first.
    min_interval : float
        Least time between two redraws, in seconds (default
        :data:`~scalekit.config.MIN_REFRESH_S`: at most twice a second).

    Attributes
    ----------
    widget : ipywidgets.VBox
        The root widget (CSS class ``scalekit-training-panel``).
    state : TrainingState
        What the panel knows; read it under no lock only for display.
    epoch_bar, batch_bar : ipywidgets.IntProgress
        Finished epochs of ``max_epochs``; batches of the epoch in progress.
    epoch_label, batch_label, header_html, stats_html, ranks_html, charts_html,
    events_html, table_html, status_html : ipywidgets.HTML
        The read-only parts; ``events_html`` holds the world-size chart (right under
        the loss chart, on the same x axis), the last checkpoint, the recoveries and
        the timeline.
    loss_scale : ipywidgets.ToggleButtons
        The loss chart's y axis: ``auto`` (log once the loss fell tenfold), ``linear``
        or ``log``.
    table_toggle : ipywidgets.ToggleButton
        Shows the whole epoch log; the last :data:`~scalekit.views.training_render.
        TABLE_ROWS` epochs otherwise (hidden while there are no more).
    renders : int
        How many redraws happened (for tests and benchmarks).
    """

    def __init__(
        self, bus: EventBus, *, run_id: str, events: Iterable[Event] = (),
        min_interval: float = MIN_REFRESH_S,
    ) -> None:
        super().__init__()
        self.bus = bus
        self.run_id = run_id
        self.min_interval = float(min_interval)
        self.state = TrainingState(run_id=run_id)
        self.renders = 0
        self.disposed = False
        self._lock = threading.RLock()  # guards state
        self._draw_lock = threading.Lock()  # one redraw at a time, in order
        self._timer_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_render = 0.0
        self._drawn_version = -1
        self._drawn_events: tuple[int, int, str] | None = None
        self._build()
        with self._lock:  # live events wait until the past ones are folded in
            self._unsubscribe: Callable[[], None] | None = bus.subscribe(
                self._on_event, replay=False
            )
            past = tuple(events)
            self._past_ids = {id(e) for e in past}
            self._past = past  # keeps the ids above valid
            for event in past:
                if self._relevant(event):
                    self.state.apply(event)
            finished = self.state.status not in ("waiting", "running")
        self._render()
        if finished:
            self._stop_listening()
            self.finalize()

    def _build(self) -> None:
        self.header_html = widgets.HTML(self._header())
        self.epoch_bar = widgets.IntProgress(value=0, min=0, max=1, description="Epochs",
                                             bar_style="info")
        self.epoch_label = widgets.HTML("")
        self.batch_bar = widgets.IntProgress(value=0, min=0, max=1, description="Batches")
        self.batch_label = widgets.HTML("")
        self.stats_html = widgets.HTML("")
        self.ranks_html = widgets.HTML("")
        self.data_html = widgets.HTML("")  # sharded data: shards done/total per rank
        self.charts_html = widgets.HTML("")
        self.events_html = widgets.HTML("")
        self.table_html = widgets.HTML("")
        self.status_html = widgets.HTML("")
        self.loss_scale = widgets.ToggleButtons(
            options=list(training_render.LOSS_SCALES), value="auto", description="loss axis",
            tooltips=["log once the loss fell tenfold", "linear", "logarithmic"],
            style={"button_width": "4.5em"})
        self.table_toggle = widgets.ToggleButton(value=False, description="all epochs",
                                                 layout=widgets.Layout(display="none"))
        self.epoch_box = widgets.HBox([self.epoch_bar, self.epoch_label])
        self.batch_box = widgets.HBox([self.batch_bar, self.batch_label])
        self.widget = widgets.VBox([
            self.header_html, self.epoch_box, self.batch_box, self.stats_html,
            self.ranks_html, self.data_html, self.loss_scale, self.charts_html,
            self.events_html, self.table_html, self.table_toggle, self.status_html,
        ])
        for w, css in (
            (self.widget, "scalekit-training-panel"),
            (self.epoch_box, "scalekit-epoch-progress"),
            (self.batch_box, "scalekit-batch-progress"),
            (self.stats_html, "scalekit-training-stats"),
            (self.ranks_html, "scalekit-training-ranks"),
            (self.data_html, "scalekit-training-data"),
            (self.charts_html, "scalekit-training-charts"),
            (self.events_html, "scalekit-training-timeline"),
            (self.table_html, "scalekit-epoch-log"),
            (self.status_html, "scalekit-training-status"),
            (self.loss_scale, "scalekit-loss-scale"),
            (self.table_toggle, "scalekit-epoch-toggle"),
        ):
            w.add_class(css)
        self.loss_scale.observe(self._redraw_rows, names="value")
        self.table_toggle.observe(self._redraw_rows, names="value")

    def _redraw_rows(self, _change: dict[str, Any]) -> None:
        """The user changed the loss axis or the table's length: redraw those now."""
        with self._lock:
            self._drawn_version = -1
        self._render()

    # -- display ---------------------------------------------------------------------
    def _fallbacks(self) -> dict[str, str]:
        with self._lock:
            return {
                "text/plain": training_render.training_text(self.state),
                "text/html": training_render.training_html(self.state),
            }

    def __repr__(self) -> str:
        with self._lock:
            return f"<TrainingPanel {self.run_id} {self.state.status} " \
                   f"{training_render.epoch_text(self.state)}>"

    def _before_close(self) -> None:
        self._cancel_timer()

    # -- events (any thread) ---------------------------------------------------------
    def _relevant(self, event: Event) -> bool:
        return isinstance(event, Notice) or getattr(event, "run_id", None) == self.run_id

    def _on_event(self, event: Event) -> None:
        if self.disposed or not self._relevant(event):
            return
        with self._lock:
            if id(event) in self._past_ids:
                return  # already folded in from ``events``
            self.state.apply(event)
        urgent = isinstance(event, URGENT) or (
            isinstance(event, RankStatus) and event.state in ("failed", "aborted")
        )
        self.request_render(urgent=urgent)
        if isinstance(event, RunFinished):
            self._stop_listening()
            self.finalize()  # drawn at once above: the outputs keep this last state

    def request_render(self, *, urgent: bool = False) -> None:
        """Redraw now if the last redraw is old enough, else once the interval is over.

        Parameters
        ----------
        urgent : bool
            Redraw at once, however recent the last redraw (epoch ends, the run's start
            and end, a failed rank).
        """
        now = time.monotonic()
        with self._timer_lock:
            if not urgent and now - self._last_render < self.min_interval:
                if self._timer is None and not self.disposed:
                    delay = self._last_render + self.min_interval - now
                    self._timer = threading.Timer(max(delay, 0.0), self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last_render = now
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._render()

    def _flush(self) -> None:
        with self._timer_lock:
            self._timer = None
            self._last_render = time.monotonic()
        self._render()

    def _cancel_timer(self) -> None:
        with self._timer_lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # -- drawing ---------------------------------------------------------------------
    def _header(self) -> str:
        return (f"<b>scalekit training</b> · run <code>{escape(self.run_id)}</code> · "
                f"{escape(self.state.status)}")

    def _render(self) -> None:
        """Push the state into the widgets (only values that changed are sent)."""
        if self.disposed:
            return
        try:
            with self._draw_lock:
                with self._lock:
                    values = self._values()
                for widget, name, value in values:
                    if getattr(widget, name) != value:
                        setattr(widget, name, value)
                self.renders += 1
        except Exception:  # a broken view must not break the training
            logger.exception("training panel failed to redraw")

    def _values(self) -> list[tuple[widgets.Widget, str, Any]]:
        s = self.state
        total = max(s.max_epochs or s.epochs_done, 1)
        batch = s.batch if training_render.batch_text(s) else None
        values: list[tuple[widgets.Widget, str, Any]] = [
            (self.header_html, "value", self._header()),
            (self.epoch_bar, "max", total),
            (self.epoch_bar, "value", min(s.epochs_done, total)),
            (self.epoch_bar, "bar_style", BAR_STYLES.get(s.status, "")),
            (self.epoch_label, "value", escape(training_render.epoch_text(s))),
            (self.batch_bar, "max", max(batch[2], 1) if batch else 1),
            (self.batch_bar, "value", min(batch[1], batch[2]) if batch else 0),
            (self.batch_label, "value", escape(training_render.batch_text(s))),
            (self.batch_box.layout, "display", "flex" if batch else "none"),
            (self.stats_html, "value", escape(training_render.stats_text(s))),
            (self.ranks_html, "value", training_render.rank_chips_html(s)),
            (self.data_html, "value", training_render.data_html(s)),
            (self.status_html, "value", training_render.status_html(s)),
        ]
        if s.version != self._drawn_version:  # a new epoch row: table and charts
            self._drawn_version = s.version
            rows, short = len(s.rows), training_render.TABLE_ROWS
            every = self.table_toggle.value
            values += [
                (self.charts_html, "value",
                 training_render.charts_html(s, self.loss_scale.value)),
                (self.table_html, "value", training_render.epoch_table_html(
                    s, None if every else short, expander=False)),
                (self.table_toggle, "description",
                 f"last {short} epochs" if every else f"all {rows} epochs"),
                (self.table_toggle.layout, "display", "flex" if rows > short else "none"),
                (self.loss_scale.layout, "display", "flex" if rows else "none"),
            ]
        events_key = (s.version, s.events_version, s.status)
        if events_key != self._drawn_events:  # world sizes, timeline or progress changed
            self._drawn_events = events_key
            values.append((self.events_html, "value", timeline_render.events_html(s)))
        return values

