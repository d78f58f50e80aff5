"""The harness fails *with a screenshot* when a widget does not render.

A second JupyterLab server runs with the ipywidgets frontend disabled in its own config
(``jupyter labextension disable @jupyter-widgets/jupyterlab-manager``), as for a user whose
JupyterLab lacks it. The panel then cannot render as a widget: :func:`wait_for_widget` must
raise :class:`WidgetNotRendered` naming a screenshot that exists. The output falls back to
the panel's static HTML, which this test checks too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_harness import WIDGET_MANAGER, LabServer, WidgetNotRendered, find_cell, wait_for_widget

pytestmark = pytest.mark.slow

QUICKSTART = "01_quickstart.ipynb"
UP_CELL = find_cell(QUICKSTART, "%scalekit up", "code")


@pytest.fixture(scope="module")
def lab_without_widgets(tmp_path_factory: pytest.TempPathFactory, chromium: str
                        ) -> Iterator[LabServer]:
    base = tmp_path_factory.mktemp("lab-no-widgets")
    server = LabServer(base, name="no-widgets", disabled_extensions=[WIDGET_MANAGER])
    page_config = json.loads(Path(base / "config" / "labconfig" / "page_config.json")
                             .read_text())
    assert page_config["disabledExtensions"].get(WIDGET_MANAGER) is True, page_config
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.timeout(420)
def test_missing_widget_frontend_fails_with_a_screenshot(open_notebook: Any,
                                                         lab_without_widgets: LabServer
                                                         ) -> None:
    from playwright.sync_api import expect

    nb = open_notebook(lab_without_widgets, QUICKSTART)
    nb.run_all_above(UP_CELL + 1, timeout=240)
    output = nb.output(UP_CELL)
    # the kernel did its part: the static fallback of the panel is there
    expect(output.locator(".scalekit-cluster")).to_contain_text("scalekit cluster")

    with pytest.raises(WidgetNotRendered) as failure:
        wait_for_widget(output, ".scalekit-cluster-panel", page=nb.page,
                        name="no-widget-frontend", timeout=10)
    shot = failure.value.screenshot
    assert shot.is_file() and shot.stat().st_size > 0
    assert shot.name == "no-widget-frontend-not-rendered.png"
    message = str(failure.value)
    assert str(shot) in message and WIDGET_MANAGER in message and "scalekit cluster" in message
