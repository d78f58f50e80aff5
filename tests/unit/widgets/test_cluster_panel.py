"""ClusterPanel through its widget model: a real EventBus, fake callbacks, no browser."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from scalekit.events import (
    AdaptChanged,
    ClusterSnapshot,
    EventBus,
    Notice,
    ScaleRequested,
    WorkerStats,
)
from scalekit.views.html import DANGER_COLOR
from scalekit.widgets.cluster_panel import WIDGET_VIEW, ClusterPanel

GIB = 2**30


def _workers(n: int) -> tuple[WorkerStats, ...]:
    return tuple(
        WorkerStats(name=str(i), address=f"tcp://127.0.0.1:{4000 + i}", nthreads=1,
                    cpu=10.0 * (i + 1), memory=(i + 1) * GIB // 4, memory_limit=GIB)
        for i in range(n)
    )


def _snap(n: int = 2, **kw: Any) -> ClusterSnapshot:
    values: dict[str, Any] = dict(
        backend="local", status="running", workers=_workers(n), requested=n,
        dashboard_link="http://127.0.0.1:8787/status",
    )
    values.update(kw)
    return ClusterSnapshot(**values)


class Calls:
    """Records the panel's intents; ``fail`` makes the next calls raise."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def _record(self, *call: Any) -> None:
        self.log.append(call)
        if self.fail is not None:
            raise self.fail

    def scale(self, n: int) -> None:
        self._record("scale", n)

    def adapt(self, lo: int, hi: int) -> None:
        self._record("adapt", lo, hi)

    def stop_adapt(self) -> None:
        self._record("stop_adapt")


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def panel(bus: EventBus, calls: Calls) -> Any:
    bus.publish(_snap(2))
    p = ClusterPanel(bus, on_scale=calls.scale, on_adapt=calls.adapt,
                     on_stop_adapt=calls.stop_adapt, max_workers=8, history=5)
    yield p
    p.close()


def test_replayed_state_sets_the_slider(panel: ClusterPanel) -> None:
    s = panel.workers_slider
    assert (s.value, s.min, s.max, s.continuous_update) == (2, 1, 8, False)
    assert not s.disabled


def test_user_moves_slider_calls_on_scale(panel: ClusterPanel, calls: Calls) -> None:
    panel.workers_slider.value = 5
    assert calls.log == [("scale", 5)]


def test_frontend_state_change_calls_on_scale(panel: ClusterPanel, calls: Calls) -> None:
    panel.workers_slider.set_state({"value": 4})  # what a comm message from the browser does
    assert calls.log == [("scale", 4)]


def test_slider_follows_other_sources_without_calling_back(
    bus: EventBus, panel: ClusterPanel, calls: Calls
) -> None:
    bus.publish(ScaleRequested(n=6, source="magic"))
    assert panel.workers_slider.value == 6
    assert calls.log == []


def test_stale_snapshot_does_not_pull_the_slider_back(
    bus: EventBus, panel: ClusterPanel, calls: Calls
) -> None:
    stale = _snap(2)  # taken before the request below, published after it
    bus.publish(ScaleRequested(n=4, source="magic"))
    bus.publish(stale)
    assert panel.workers_slider.value == 4
    bus.publish(_snap(4))
    assert panel.workers_slider.value == 4 and calls.log == []


def test_follow_from_another_thread(bus: EventBus, panel: ClusterPanel, calls: Calls) -> None:
    t = threading.Thread(target=bus.publish, args=(ScaleRequested(n=3, source="training"),))
    t.start()
    t.join()
    assert panel.workers_slider.value == 3 and calls.log == []
    panel.workers_slider.value = 7  # the user's change on this thread still counts
    assert calls.log == [("scale", 7)]


def test_adaptive_toggle_calls_on_adapt_and_off(panel: ClusterPanel, calls: Calls) -> None:
    panel.adaptive_range.value = (2, 5)
    assert calls.log == []  # bounds alone do nothing while adaptive is off
    panel.adaptive_toggle.value = True
    assert calls.log == [("adapt", 2, 5)]
    assert panel.workers_slider.disabled
    panel.adaptive_range.value = (1, 6)
    assert calls.log[-1] == ("adapt", 1, 6)
    panel.adaptive_toggle.value = False
    assert calls.log[-1] == ("stop_adapt",)
    assert not panel.workers_slider.disabled


def test_adaptive_on_slider_shows_actual_count_disabled(
    bus: EventBus, panel: ClusterPanel, calls: Calls
) -> None:
    bus.publish(AdaptChanged(minimum=1, maximum=4, source="magic"))
    assert panel.adaptive_toggle.value and panel.adaptive_range.value == (1, 4)
    bus.publish(_snap(3, requested=None, adaptive=(1, 4)))
    assert panel.workers_slider.value == 3
    assert panel.workers_slider.disabled
    bus.publish(_snap(1, requested=None, adaptive=(1, 4)))
    assert panel.workers_slider.value == 1
    assert calls.log == []
    bus.publish(AdaptChanged(source="api"))
    assert not panel.adaptive_toggle.value and not panel.workers_slider.disabled
    assert calls.log == []


def test_raising_scale_callback_shows_error_and_reverts(
    panel: ClusterPanel, calls: Calls
) -> None:
    calls.fail = RuntimeError("scheduler unreachable")
    panel.workers_slider.value = 6
    assert calls.log == [("scale", 6)]
    assert panel.workers_slider.value == 2
    assert "scheduler unreachable" in panel.status_html.value
    assert DANGER_COLOR in panel.status_html.value
    assert len(calls.log) == 1  # the revert did not call on_scale again


def test_raising_adapt_callback_reverts_toggle(panel: ClusterPanel, calls: Calls) -> None:
    calls.fail = ValueError("adapt.maximum: got 9")
    panel.adaptive_toggle.value = True
    assert not panel.adaptive_toggle.value
    assert not panel.workers_slider.disabled
    assert "adapt.maximum: got 9" in panel.status_html.value


def test_raising_bounds_callback_reverts_range(panel: ClusterPanel, calls: Calls) -> None:
    panel.adaptive_range.value = (1, 3)
    panel.adaptive_toggle.value = True
    calls.fail = ValueError("too many")
    panel.adaptive_range.value = (1, 8)
    assert panel.adaptive_range.value == (1, 3)
    assert "too many" in panel.status_html.value


def test_notices_in_status_line(bus: EventBus, panel: ClusterPanel) -> None:
    bus.publish(Notice(level="info", message="scaling to 3 workers"))
    assert "scaling to 3 workers" in panel.status_html.value
    bus.publish(Notice(level="error", message="worker <w1> died"))
    assert "worker &lt;w1&gt; died" in panel.status_html.value
    assert DANGER_COLOR in panel.status_html.value


def test_closed_snapshot_disables_controls_and_unsubscribes(
    bus: EventBus, panel: ClusterPanel, calls: Calls
) -> None:
    bus.publish(ClusterSnapshot(backend="local", status="closed"))
    for control in (panel.workers_slider, panel.adaptive_toggle, panel.adaptive_range):
        assert control.disabled
    assert "closed" in panel.status_html.value
    status = panel.status_html.value
    bus.publish(Notice(level="info", message="later"))
    bus.publish(ScaleRequested(n=5, source="magic"))
    assert panel.status_html.value == status and panel.workers_slider.value == 2
    panel.workers_slider.value = 4  # a stray change is put back, nothing is called
    assert panel.workers_slider.value == 2 and calls.log == []
    assert panel not in [getattr(cb, "__self__", None) for cb in bus._subscribers]


def test_panel_created_after_close_shows_closed(bus: EventBus, calls: Calls) -> None:
    bus.publish(ClusterSnapshot(backend="local", status="closed"))
    bus.publish(Notice(level="info", message="after"))
    p = ClusterPanel(bus, on_scale=calls.scale, on_adapt=calls.adapt,
                     on_stop_adapt=calls.stop_adapt)
    assert p.workers_slider.disabled and "closed" in p.status_html.value
    p.close()


def test_starting_cluster_disables_controls_until_running(bus: EventBus, calls: Calls) -> None:
    bus.publish(ClusterSnapshot(backend="local", status="starting", requested=3))
    p = ClusterPanel(bus, on_scale=calls.scale, on_adapt=calls.adapt,
                     on_stop_adapt=calls.stop_adapt)
    assert p.workers_slider.value == 3 and p.workers_slider.disabled
    bus.publish(_snap(3))
    assert not p.workers_slider.disabled and not p.adaptive_toggle.disabled
    p.close()


def test_worker_bars_totals_dashboard_and_history(bus: EventBus, panel: ClusterPanel) -> None:
    html = panel.workers_html.value
    assert html.count('class="scalekit-worker"') == 2
    assert "10 %" in html and "20 %" in html
    assert "0.25 / 1.00 GiB" in html and "0.50 / 1.00 GiB" in html
    assert "2 workers" in panel.totals_html.value
    assert 'href="http://127.0.0.1:8787/status"' in panel.dashboard_html.value
    assert "<svg" in panel.history_html.value
    for _ in range(10):
        bus.publish(_snap(2))
    assert len(panel.state.cpu_history) == 5  # history keeps the last `history` snapshots
    bus.publish(_snap(3))
    assert panel.workers_html.value.count('class="scalekit-worker"') == 3


def test_unchanged_values_are_not_pushed(bus: EventBus, panel: ClusterPanel) -> None:
    changes: list[str] = []
    for w in (panel.workers_html, panel.totals_html, panel.workers_slider):
        w.observe(lambda c: changes.append(c["name"]), names=["value", "disabled"])
    snap = _snap(2)
    bus.publish(snap)
    bus.publish(snap)
    assert changes == []


def test_mimebundle_has_widget_view_and_fallbacks(panel: ClusterPanel) -> None:
    bundle = panel._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == panel.widget.model_id
    assert 'class="scalekit-cluster"' in bundle["text/html"]
    assert "2 workers" in bundle["text/plain"]
    only = panel._repr_mimebundle_(include={"text/plain"})
    assert set(only) == {"text/plain"}
    assert WIDGET_VIEW not in panel._repr_mimebundle_(exclude={WIDGET_VIEW})


def test_close_unsubscribes_and_keeps_fallbacks(bus: EventBus, panel: ClusterPanel) -> None:
    panel.close()
    panel.close()
    bus.publish(ScaleRequested(n=5, source="magic"))
    bundle = panel._repr_mimebundle_()
    assert WIDGET_VIEW not in bundle and "text/html" in bundle


def test_publish_stays_cheap(bus: EventBus, panel: ClusterPanel) -> None:
    start = time.perf_counter()
    for i in range(50):
        bus.publish(_snap(1 + i % 8))
    assert (time.perf_counter() - start) / 50 < 0.02


def test_gpu_workers_reach_the_widget_state(bus: EventBus, panel: ClusterPanel) -> None:
    assert "GPU" not in panel.workers_html.get_state()["value"]  # the CPU-only fixture
    gpu = WorkerStats(name="2", address="tcp://127.0.0.1:4002", nthreads=4, gpus=1.0,
                      gpu_name="NVIDIA H200", gpu_utilization=55.0, gpu_memory=7 * GIB,
                      gpu_memory_total=140 * GIB)
    blind = WorkerStats(name="3", address="tcp://127.0.0.1:4003", nthreads=4, gpus=1.0)
    bus.publish(_snap(4, workers=(*_workers(2), gpu, blind)))
    workers = panel.workers_html.get_state()["value"]  # what the frontend model holds
    assert ">GPU</th>" in workers
    assert "55 %" in workers and "7.00 / 140.00 GiB" in workers
    assert "GPU=1 · <em>utilisation needs nvidia-ml-py</em>" in workers
    totals = panel.totals_html.get_state()["value"]
    assert "2 GPU workers · GPU 55 % (mean) · GPU memory 7.00 / 140.00 GiB" in totals
    assert "GPU 55 %  GPU memory 7.00 / 140.00 GiB" in panel._repr_mimebundle_()["text/plain"]


def test_a_closed_cluster_leaves_static_html_in_the_notebook(
        bus: EventBus, panel: ClusterPanel, displayed: list[Any]) -> None:
    """Reopened later, the output must not be a widget whose model is gone."""
    panel._ipython_display_()
    (handle,) = displayed
    assert WIDGET_VIEW in handle.shown and "text/html" in handle.shown  # live: the widget
    bus.publish(ClusterSnapshot(backend="local", status="closed"))
    (final,) = handle.updates
    assert set(final) == {"text/plain", "text/html"}  # no widget view any more
    assert "closed" in final["text/html"] and "cluster closed" in final["text/html"]
    panel._ipython_display_()  # shown again afterwards: static at once
    assert WIDGET_VIEW not in displayed[-1].shown
    assert WIDGET_VIEW not in panel._repr_mimebundle_()


def test_scaling_notice_goes_once_the_workers_are_there(bus: EventBus,
                                                        panel: ClusterPanel) -> None:
    bus.publish(ScaleRequested(n=3, source="panel"))
    bus.publish(Notice(level="info", message="scaling to 3 workers"))
    bus.publish(_snap(2, requested=3))
    assert "scaling to 3 workers" in panel.status_html.value
    bus.publish(_snap(3))
    assert panel.status_html.value == ""


def test_closing_clears_the_history_legend(bus: EventBus, panel: ClusterPanel) -> None:
    assert "■ CPU" in panel.history_html.value
    bus.publish(ClusterSnapshot(backend="local", status="closed"))
    assert panel.history_html.value == "" and panel.totals_html.value == ""
    assert panel.dashboard_html.value == "" and panel.header_html.value.endswith("closed")
    assert "local · closed" in panel.header_html.value


def test_header_reads_status_then_dashboard_link(panel: ClusterPanel) -> None:
    header = panel.widget.children[0]  # the header's text, then the link beside it
    assert header.children == (panel.header_html, panel.dashboard_html)
    text = " ".join(re.sub(r"<[^>]+>", "", w.value) for w in header.children)
    assert text == "scalekit cluster · local · running · Dask dashboard ↗"


def test_slider_range_and_track_follow_the_configured_maximum(bus: EventBus,
                                                              calls: Calls) -> None:
    widths = {}
    for most in (2, 8, 16, 64):
        p = ClusterPanel(bus, on_scale=calls.scale, on_adapt=calls.adapt,
                         on_stop_adapt=calls.stop_adapt, max_workers=most)
        assert (p.workers_slider.min, p.workers_slider.max) == (1, most)
        assert p.adaptive_range.max == most
        widths[most] = int(p.workers_slider.layout.width.removesuffix("px"))
        p.close()
    assert widths[2] == 280 and widths[8] == 292 and widths[16] == 484 and widths[64] == 520
    # up to 16 workers a step is 20 px or more of track (16 once had 124 px in all)
    assert all((w - 100) / (m - 1) >= 20 for m, w in widths.items() if m <= 16)


def test_totals_warn_when_memory_limits_overcommit_the_machine(
        bus: EventBus, panel: ClusterPanel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scalekit.views.memory._psutil_total", lambda: 3 * GIB)
    bus.publish(_snap(4))  # 4 workers with 1 GiB limits on a 3 GiB machine
    totals = panel.totals_html.value
    assert "memory 2.50 / 3.00 GiB (this machine; limits 4.00 GiB)" in totals
    assert 'class="scalekit-memory-warning"' in totals and "1.3× this machine" in totals
    assert "at most 0.5GiB" in totals  # 3 GiB for 4 workers, in half GiBs
