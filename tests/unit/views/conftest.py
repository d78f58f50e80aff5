"""The machine's memory is unknown in these tests unless a test says what it is.

The views compare the workers' memory limits with the memory of the machine they run
on (read with psutil for workers on this machine); the figures a test checks must not
depend on the machine that runs it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_machine_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scalekit.views.memory._psutil_total", lambda: None)
