"""Fixtures of the browser tests: one Chromium per test module, one JupyterLab
server per session.

- ``browser``: headless Debian Chromium driven by Playwright (skipped with a reason when
  Chromium is missing, except under CI=true, where that is a failure).
- ``lab_server``: ``jupyter lab`` on 127.0.0.1 with isolated config dirs (a test asks a
  notebook's kernel where its scheduler listens with ``LabServer.kernel_value``).
- ``open_notebook(server, name)``: a fresh browser context with the notebook open and its
  kernel idle. Afterwards (pass or fail) it saves a screenshot of a failed test, closes
  the page and deletes every session of the server, so kernels and their Dask workers
  exit; a process that outlives that fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ui_harness import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, LabServer, Notebook, screenshot


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium the browser tests drive, or a skip (a failure under CI=true)."""
    if not os.access(CHROMIUM, os.X_OK):
        message = (f"{CHROMIUM} not found: `make test` installs Debian's chromium "
                   "(apt-get install -y chromium), or set SCALEKIT_CHROMIUM")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


# Module scope, not session: while Playwright's sync API is open it keeps an asyncio loop
# marked as running in the main thread, so any later test's asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory, chromium: str
               ) -> Iterator[LabServer]:
    server = LabServer(tmp_path_factory.mktemp("lab"), name="main")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def open_notebook(browser: Any, request: pytest.FixtureRequest
                  ) -> Iterator[Callable[[LabServer, str], Notebook]]:
    opened: list[tuple[Any, LabServer, Notebook]] = []

    def open_(server: LabServer, name: str) -> Notebook:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        nb = Notebook(page, server, name)
        opened.append((context, server, nb))
        return nb.open()

    yield open_

    leftovers: list[str] = []
    for context, server, nb in opened:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            try:
                screenshot(nb.page, f"FAILED-{request.node.name}")
            except Exception:  # the page may be what broke
                pass
        context.close()
        leftovers += server.delete_sessions()
    assert not leftovers, f"processes outlived their kernel's shutdown: {leftovers}"
