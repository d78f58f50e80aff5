"""The cluster panel steering a real LocalCluster, as the frontend would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

import scalekit as sk


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        time.sleep(0.1)


@pytest.fixture
def session() -> Iterator[sk.ClusterSession]:
    s = sk.cluster(workers=2)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(90)
def test_slider_scales_the_cluster_and_follows_the_api(session: sk.ClusterSession) -> None:
    panel = session.panel
    assert panel.workers_slider.value == 2
    if session.dashboard_link:  # from the first sample (the sampler's, in its thread)
        _wait_until(lambda: "href=" in panel.dashboard_html.value, timeout=10)

    panel.workers_slider.value = 3  # what a comm message from the browser does
    _wait_until(lambda: len(session.client.nthreads()) == 3)
    assert "error" not in panel.status_html.value
    _wait_until(lambda: panel.snapshot is not None and panel.snapshot.n_workers == 3)
    assert panel.workers_html.value.count('class="scalekit-worker"') == 3

    session.scale(1)  # someone else scales: the slider follows, nothing is called back
    _wait_until(lambda: panel.workers_slider.value == 1, timeout=5)
    _wait_until(lambda: len(session.client.nthreads()) == 1)
    time.sleep(1.0)  # a few sampler ticks later the slider still says 1
    assert panel.workers_slider.value == 1

    session.close()
    assert panel.workers_slider.disabled and "closed" in panel.status_html.value
