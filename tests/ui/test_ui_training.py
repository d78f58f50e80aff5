"""The distributed-training tutorial in JupyterLab: the live training panel and the result."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ui_harness import element_screenshot, find_cell

pytestmark = pytest.mark.slow

TRAINING = "02_distributed_training.ipynb"
COMPARE = find_cell(TRAINING, "results.items()", "code")  # the table of accuracies


def last_fit_cell() -> int:
    """The two-worker fit's cell: its panel shows the tutorial's final run (the GPU cell
    after it trains only where there is a GPU)."""
    return find_cell(TRAINING, "sk.fit(net2", "code")


@pytest.mark.timeout(600)
def test_training_tutorial_shows_progress_loss_curve_and_accuracy(open_notebook: Any,
                                                                 lab_server: Any) -> None:
    from playwright.sync_api import expect

    nb = open_notebook(lab_server, TRAINING)
    nb.run_all(timeout=480)

    fit = last_fit_cell()
    # the run is over, so its output is the panel's last state as static HTML (what the
    # saved notebook keeps; see scalekit/widgets/view.py), not the live widget
    panel = nb.output(fit).locator(".scalekit-training")
    expect(panel).to_contain_text("finished", timeout=60_000)
    # JupyterLab does not lay out cells far off screen (inner text, boxes): bring it in
    panel.scroll_into_view_if_needed()
    expect(nb.output(fit).locator(".scalekit-training-panel")).to_have_count(0)
    # the progress reached the last epoch and the run finished
    progress = panel.locator(".scalekit-epoch-progress")
    expect(progress).to_contain_text(re.compile(r"epoch (\d+)/\1\b"))
    done, total = map(int, re.search(r"epoch (\d+)/(\d+)", progress.text_content()).groups())
    assert done == total > 1
    expect(panel.locator(".scalekit-training-status")).to_contain_text("finished")
    # the loss chart is drawn: one point per epoch on a visible polyline
    chart = panel.locator("svg.scalekit-loss-chart")
    expect(chart).to_be_visible()
    line = chart.locator("polyline").first
    points = line.get_attribute("points").split()
    assert len(points) == total, f"{len(points)} points on the loss curve for {total} epochs"
    # more than max and 0 on the loss axis, and the loss chart sits on the world-size
    # chart's x axis: same left edge and width, one above the other
    assert chart.locator("text.scalekit-y-tick").count() >= 4
    world = panel.locator("svg.scalekit-world-chart")
    a, b = chart.bounding_box(), world.bounding_box()
    assert a and b and (a["x"], a["width"]) == (b["x"], b["width"]) and a["y"] < b["y"]
    # the throughput says what it measures; a resize or recovery would read "after epoch"
    expect(panel.locator(".scalekit-training-stats")).to_contain_text(
        re.compile(r"samples/s over the whole run \(start-up included\)"))
    # the epoch log shows the last rows; "all N epochs" opens the whole log
    tables = panel.locator("table.scalekit-epoch-table")
    expect(tables.first.locator("tr.scalekit-epoch-row")).to_have_count(min(total, 5))
    element_screenshot(nb.page, panel, "training-panel", docs=True)
    if total > 5:
        more = panel.locator("details.scalekit-epoch-more")
        expect(more.locator("summary")).to_have_text(f"all {total} epochs")
        full = more.locator("tr.scalekit-epoch-row")
        expect(full.first).to_be_hidden()
        more.locator("summary").click()
        expect(full).to_have_count(total)
        expect(full.last).to_be_visible()
        element_screenshot(nb.page, panel, "training-panel-all-epochs")

    # the final accuracies are printed, and good
    table = nb.output(COMPARE).text_content()
    rows = re.findall(r"^(.*?)\s+(\d\.\d+)\s+(\d+\.\d+)\s*$", table, flags=re.M)
    assert any("2 workers" in how for how, _, _ in rows), table
    for how, accuracy, _seconds in rows:
        assert float(accuracy) > 0.85, f"{how.strip()}: test accuracy {accuracy}"
    element_screenshot(nb.page, nb.output(COMPARE), "training-accuracy")
