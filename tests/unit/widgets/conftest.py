"""Fixtures of the panel tests: an unknown machine, and a fake notebook display.

The views compare the workers' memory limits with the memory of the machine they run
on (read with psutil for workers on this machine); the figures a test checks must not
depend on the machine that runs it. ``displayed`` stands in for IPython's display
function and records the outputs a panel made and how they were updated later.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_machine_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scalekit.views.memory._psutil_total", lambda: None)


class FakeHandle:
    """What ``IPython.display.display(..., display_id=True)`` returns, recording updates."""

    def __init__(self, shown: dict[str, Any]) -> None:
        self.shown = shown
        self.updates: list[dict[str, Any]] = []

    def update(self, data: dict[str, Any], raw: bool = False) -> None:
        assert raw
        self.updates.append(data)


@pytest.fixture
def displayed(monkeypatch: pytest.MonkeyPatch) -> list[FakeHandle]:
    handles: list[FakeHandle] = []

    def display(data: dict[str, Any], raw: bool = False, display_id: Any = None) -> FakeHandle:
        assert raw and display_id is True  # a handle to update the output later
        handles.append(FakeHandle(data))
        return handles[-1]

    monkeypatch.setattr("IPython.display.display", display)
    return handles
