"""The quickstart as a person uses it: JupyterLab in Chromium, the cluster panel, the mouse
and the keyboard, checked on the kernel side with a separate ``distributed.Client``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from ui_harness import (
    SCHEDULER_ADDRESS,
    Notebook,
    artifact_path,
    element_screenshot,
    find_cell,
    wait_for_widget,
    wait_until,
)

pytestmark = pytest.mark.slow

QUICKSTART = "01_quickstart.ipynb"
UP_CELL = find_cell(QUICKSTART, "%scalekit up", "code")
# the cells above "## 4. Scale" start the cluster; the panel is used there, then the
# rest of the notebook runs
SCALE_SECTION = find_cell(QUICKSTART, "## 4. Scale")
CLUSTER_S = 120  # a cluster start or resize on a busy 2-core machine
RED = "rgb(214, 39, 40)"  # the panel's error colour, #d62728


@pytest.fixture
def quickstart(open_notebook: Any, lab_server: Any) -> Notebook:
    """The quickstart open and run up to its panel section, the panel on screen."""
    nb = open_notebook(lab_server, QUICKSTART)
    nb.run_all_above(SCALE_SECTION, timeout=240)
    nb.panel = wait_for_widget(nb.output(UP_CELL), ".scalekit-cluster-panel", page=nb.page,
                               name="cluster-panel", timeout=60)
    return nb


@pytest.fixture
def scheduler(quickstart: Notebook) -> Iterator[Any]:
    """A ``distributed.Client`` of our own, connected to the notebook's scheduler (the
    kernel says where: its session registry's current cluster)."""
    from distributed import Client

    address = quickstart.server.kernel_value(QUICKSTART, SCHEDULER_ADDRESS)
    assert address.startswith("tcp://127.0.0.1:"), address
    client = Client(address, timeout=60)
    try:
        yield client
    finally:
        client.close()


def n_workers(client: Any) -> int:
    return len(client.nthreads())  # asks the scheduler each time


def wait_for_workers(client: Any, n: int) -> None:
    wait_until(lambda: n_workers(client) == n, CLUSTER_S, f"{n} workers on the scheduler",
               interval=0.5)


def handle_value(handle: Any) -> int:
    return int(float(handle.get_attribute("aria-valuenow")))


def press_until(page: Any, handle: Any, key: str, value: int) -> None:
    """Focus a slider handle and press ``key`` until it shows ``value`` (one step a press)."""
    handle.focus()
    for _ in range(32):
        if handle_value(handle) == value:
            return
        page.keyboard.press(key)
    raise AssertionError(f"slider handle stuck at {handle_value(handle)}, wanted {value}")


def drag_to(page: Any, slider: Any, value: int) -> None:
    """Drag the slider's handle with the mouse to where ``value`` sits on the track."""
    handle = slider.locator(".noUi-handle").first
    lo = float(handle.get_attribute("aria-valuemin"))
    hi = float(handle.get_attribute("aria-valuemax"))
    track = slider.locator(".noUi-base").first.bounding_box()
    box = handle.bounding_box()
    assert track and box, "slider not laid out"
    y = box["y"] + box["height"] / 2
    x = track["x"] + track["width"] * (value - lo) / (hi - lo)
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(x, y, steps=10)
    page.mouse.up()


@pytest.mark.timeout(600)
def test_quickstart_panel_scales_by_keyboard_and_mouse_and_adapts(quickstart: Notebook,
                                                                   scheduler: Any) -> None:
    from playwright.sync_api import expect

    nb, page, panel = quickstart, quickstart.page, quickstart.panel
    slider = panel.locator(".scalekit-workers-slider")
    readout = slider.locator(".widget-readout")
    handle = slider.locator(".noUi-handle").first
    status = panel.locator(".scalekit-status-line")

    # two workers, in the panel and on the scheduler
    expect(readout).to_have_text("2")
    wait_for_workers(scheduler, 2)
    expect(panel.locator(".scalekit-totals")).to_contain_text("2 workers",
                                                             timeout=CLUSTER_S * 1000)

    # keyboard: focus the handle, one arrow press is one worker
    handle.focus()
    page.keyboard.press("ArrowRight")
    expect(readout).to_have_text("3")
    wait_for_workers(scheduler, 3)
    # "scaling to 3 workers" says what is under way: gone once the panel has the 3
    expect(panel.locator(".scalekit-worker")).to_have_count(3, timeout=CLUSTER_S * 1000)
    expect(status).not_to_contain_text("scaling to", timeout=30_000)
    page.keyboard.press("ArrowLeft")
    expect(readout).to_have_text("2")
    wait_for_workers(scheduler, 2)

    # mouse: drag the handle along the track
    drag_to(page, slider, 3)
    expect(readout).to_have_text("3")
    wait_for_workers(scheduler, 3)
    expect(panel.locator(".scalekit-worker")).to_have_count(3, timeout=CLUSTER_S * 1000)
    element_screenshot(page, panel, "cluster-panel")
    element_screenshot(page, nb.cell(UP_CELL), "quickstart-cluster-panel", docs=True)

    # adaptive between 2 and 3: set the bounds with the keyboard, then click the toggle
    bounds = panel.locator(".scalekit-adaptive-range .noUi-handle")
    press_until(page, bounds.nth(0), "ArrowRight", 2)
    press_until(page, bounds.nth(1), "ArrowLeft", 3)
    toggle = panel.locator(".scalekit-adaptive-toggle")
    toggle.click()
    expect(toggle).to_have_class(_has("mod-active"))
    expect(panel.locator(".scalekit-totals")).to_contain_text("adaptive 2..3",
                                                             timeout=CLUSTER_S * 1000)
    expect(status).not_to_contain_text("adaptive:", timeout=30_000)  # done: it says so
    expect(slider.locator(".noUi-target")).to_have_attribute("disabled", re.compile(".*"))
    # the idle cluster shrinks to the minimum on its own; the slider follows
    wait_for_workers(scheduler, 2)
    expect(readout).to_have_text("2", timeout=CLUSTER_S * 1000)
    element_screenshot(page, panel, "cluster-panel-adaptive")

    # the rest of the notebook: scale, compute, adapt, status, down
    scheduler.close()
    nb.run_from(SCALE_SECTION, timeout=300)
    assert "3 workers" in nb.output(find_cell(QUICKSTART, "session.wait_for_workers(3)", "code")
                                    ).text_content()
    # closed: the panel's output became its static last state (what the saved notebook keeps)
    closed = nb.output(UP_CELL).locator(".scalekit-cluster")
    expect(closed).to_contain_text("cluster closed", timeout=60_000)
    expect(nb.output(UP_CELL).locator(".scalekit-cluster-panel")).to_have_count(0)
    nb.page.screenshot(path=str(artifact_path("quickstart-done.png")), full_page=True)


@pytest.mark.timeout(600)
def test_panel_status_line_shows_bad_adaptive_bounds_in_red(quickstart: Notebook,
                                                           scheduler: Any) -> None:
    from playwright.sync_api import expect

    nb, page, panel = quickstart, quickstart.page, quickstart.panel
    status = panel.locator(".scalekit-status-line")
    error = status.locator(".scalekit-error")
    wait_for_workers(scheduler, 2)

    # a bad value from code: minimum above maximum
    cell = nb.add_cell_at_end("session.adapt(5, 2)")
    nb.wait_cell_ran(cell, timeout=60)
    assert "ConfigError" in nb.output(cell).text_content()
    expect(error).to_contain_text("scalekit.adapt.minimum: got 5, expected at most maximum (2)")
    expect(error).to_contain_text("Choose minimum <= maximum")
    expect(error).to_have_css("color", RED)
    element_screenshot(page, panel, "cluster-panel-error")
    # nothing changed: still two workers, adaptive still off
    toggle = panel.locator(".scalekit-adaptive-toggle")
    expect(toggle).not_to_have_class(_has("mod-active"))
    assert n_workers(scheduler) == 2

    # a bad value from the panel: adaptive on, then both bounds dragged down to 0
    toggle.click()
    expect(toggle).to_have_class(_has("mod-active"))
    expect(error).to_have_count(0)  # a good action replaces the error
    bounds = panel.locator(".scalekit-adaptive-range .noUi-handle")
    press_until(page, bounds.nth(0), "ArrowLeft", 0)
    press_until(page, bounds.nth(1), "ArrowLeft", 0)
    expect(error).to_contain_text("scalekit.adapt.maximum: got 0, expected an integer >= 1",
                                  timeout=60_000)
    expect(error).to_have_css("color", RED)
    # the panel puts back the last accepted bound (>= 1; the frontend may have sent only
    # the latest of several quick presses while the kernel was busy)
    wait_until(lambda: handle_value(bounds.nth(1)) >= 1, 30, "the rejected maximum put back")
    expect(panel.locator(".scalekit-adaptive-toggle")).to_have_class(_has("mod-active"))
    element_screenshot(page, panel, "cluster-panel-error-from-panel")


def _has(css_class: str) -> Any:
    return re.compile(rf"(^|\s){re.escape(css_class)}(\s|$)")
