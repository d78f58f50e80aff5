"""The cluster renderers: text, HTML (escaped), the dashboard link and the sparkline."""

from __future__ import annotations

import re

import pytest

from scalekit.events import ClusterSnapshot, WorkerStats
from scalekit.views import cluster_render
from scalekit.views.cluster_state import cpu_percent, memory_percent
from scalekit.views.html import notice_html

GIB = 2**30


def _snapshot(**kw: object) -> ClusterSnapshot:
    workers = (
        WorkerStats(name="0", address="tcp://127.0.0.1:4001", nthreads=1, cpu=25.0,
                    memory=GIB // 2, memory_limit=2 * GIB),
        WorkerStats(name="1", address="tcp://127.0.0.1:4002", nthreads=2, cpu=150.0,
                    memory=GIB, memory_limit=2 * GIB),
    )
    values: dict[str, object] = dict(
        backend="local", status="running", workers=workers, requested=2,
        dashboard_link="http://127.0.0.1:8787/status",
    )
    values.update(kw)
    return ClusterSnapshot(**values)  # type: ignore[arg-type]


def test_cluster_text_lists_totals_workers_and_dashboard() -> None:
    text = cluster_render.cluster_text(_snapshot())
    lines = text.splitlines()
    assert "local" in lines[0] and "running" in lines[0]
    assert "  2 workers\n" in text  # as requested: nothing to say
    assert "CPU 58 % of 3 threads" in text  # 175 % of 300 %: the sidebar's figure too
    assert "0  1 thread  " in text and "1  2 threads  " in text
    assert "1.50 / 4.00 GiB" in text  # totals
    assert "0.50 / 2.00 GiB" in text and "1.00 / 2.00 GiB" in text  # per worker
    assert " 25.0 %" in text and "150.0 %" in text
    assert "dashboard: http://127.0.0.1:8787/status" in text
    assert sum("tcp://127.0.0.1:400" in line for line in lines) == 2


def test_cluster_text_adaptive_and_closed() -> None:
    adaptive = _snapshot(adaptive=(1, 4), requested=None)
    assert "adaptive 1..4" in cluster_render.cluster_text(adaptive)
    closed = cluster_render.cluster_text(ClusterSnapshot(backend="local", status="closed"))
    assert closed.count("\n") == 0 and "closed" in closed


def test_cluster_text_without_memory_limit() -> None:
    s = _snapshot(workers=(WorkerStats(name="a", address="x", nthreads=1, memory=GIB),))
    assert "1.00 GiB (no limit)" in cluster_render.cluster_text(s)
    assert "  1 worker (requested 2)\n" in cluster_render.cluster_text(s)
    assert "2 workers (requested 3)" in cluster_render.cluster_text(_snapshot(requested=3))


def test_cluster_html_has_a_row_per_worker_with_bars() -> None:
    out = cluster_render.cluster_html(_snapshot())
    assert out.count('class="scalekit-worker"') == 2
    assert out.count('class="scalekit-bar"') == 4  # CPU and memory per worker
    assert "25 %" in out and "150 %" in out
    assert "0.50 / 2.00 GiB" in out and "1.00 / 2.00 GiB" in out
    assert 'href="http://127.0.0.1:8787/status"' in out
    # worker 1 runs 150 % on 2 threads: its CPU bar is 75 % full
    assert "width:75.0%" in out


def test_html_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    s = _snapshot(
        backend=evil,
        workers=(WorkerStats(name=evil, address='"><img src=x>', nthreads=1, status=evil),),
        details=((evil, evil),),
    )
    out = cluster_render.cluster_html(s)
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out
    assert "<script>" not in notice_html("error", evil)


def test_dashboard_link_keeps_a_jupyterhub_proxy_path():
    html = cluster_render.dashboard_html("/user/binder-abc/proxy/8787/status")
    assert 'href="/user/binder-abc/proxy/8787/status"' in html


@pytest.mark.parametrize("url", ["javascript:alert(1)", "", None, "data:text/html,x",
                                 "//evil.example/x"])
def test_dashboard_link_only_for_http(url: str | None) -> None:
    assert cluster_render.dashboard_html(url) == ""


def test_dashboard_link_escapes_quotes() -> None:
    out = cluster_render.dashboard_html('http://h/"onmouseover="x')
    assert 'href="http://h/&quot;onmouseover=&quot;x"' in out


def test_sparkline_svg_draws_both_series_in_the_box() -> None:
    svg = cluster_render.sparkline_svg([0, 50, 100], [10, 20, 30], width=100, height=20)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'width="100"' in svg and 'height="20"' in svg
    cpu = re.search(r'scalekit-spark-cpu".*?points="([^"]+)"', svg)
    assert cpu is not None
    points = [tuple(map(float, p.split(","))) for p in cpu.group(1).split()]
    assert points == [(0.0, 20.0), (50.0, 10.0), (100.0, 0.0)]
    assert "scalekit-spark-memory" in svg


def test_sparkline_handles_empty_single_and_peaks() -> None:
    assert "polyline" not in cluster_render.sparkline_svg([], [], 10, 10)
    one = cluster_render.sparkline_svg([50], [], 10, 10)
    assert 'points="0.0,5.0 10.0,5.0"' in one
    high = cluster_render.sparkline_svg([200, 100], [], 10, 10)  # scale follows the peak
    assert 'points="0.0,0.0 10.0,5.0"' in high


def test_percentages_of_capacity() -> None:
    s = _snapshot()
    assert cpu_percent(s) == pytest.approx(175 / 3)
    assert memory_percent(s) == pytest.approx(37.5)
    empty = ClusterSnapshot(backend="local", status="running")
    assert cpu_percent(empty) == 0 and memory_percent(empty) == 0
    assert "no workers" in cluster_render.workers_html(empty)


def test_header_separates_status_and_dashboard_link() -> None:
    header = cluster_render.header_html(_snapshot())
    assert re.sub(r"<[^>]+>", "", header) == "scalekit cluster · local · running · Dask dashboard ↗"
    closed = cluster_render.header_html(ClusterSnapshot(backend="local", status="closed",
                                                        dashboard_link="http://h/status"))
    assert "dashboard" not in closed  # no link to a dashboard that is gone
    # the live panel's header: the separator, then the link in a widget of its own
    assert cluster_render.header_html(_snapshot(), link=False).endswith("running ·")
    assert cluster_render.header_html(_snapshot(dashboard_link=None), link=False).endswith(
        "running")


def test_worker_table_headers_have_room_and_counts_are_singular() -> None:
    table = cluster_render.workers_html(_snapshot())
    heads = re.findall(r"<th style=\"([^\"]+)\">([^<]+)</th>", table)
    assert [h for _, h in heads] == ["worker", "threads", "CPU", "memory"]
    assert all("padding:0.1em 0.9em" in style for style, _ in heads)  # "worker" ≠ "threads"
    totals = cluster_render.totals_html(_snapshot(workers=_snapshot().workers[:1]))
    assert "of 1 thread " in totals and "1 threads" not in totals


def test_bar_labels_sit_beside_the_fill() -> None:
    table = cluster_render.workers_html(_snapshot())
    bar = re.search(r'<span class="scalekit-bar-wrap".*?</span></span>(.*?)</span>', table)
    assert bar is not None
    # the label follows the bar's own box, outside of it
    assert re.match(r'<span class="scalekit-bar-label"[^>]*>25 %$', bar.group(1))


def test_sparkline_has_axes_and_its_time_span() -> None:
    svg = cluster_render.sparkline_svg([10, 20], [30, 40], 200, 40, span_s=125.0)
    assert ">100%<" in svg and ">0<" in svg and ">now<" in svg
    assert re.search(r'class="scalekit-spark-span"[^>]*>−2m 05s<', svg)
    html = cluster_render.history_html([10, 20], [30, 40], span_s=125.0)
    assert "−2m 05s" in html and "■ CPU 20 %" in html
