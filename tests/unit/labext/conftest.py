"""The bridge's world: one fake session, a broadcast comm, a fake clock."""

from __future__ import annotations

import pytest

from scalekit.labext import LabBridge

from .fakes import Clock, FakeComm, FakeSession


@pytest.fixture
def world() -> tuple[LabBridge, list[FakeSession], FakeComm, Clock]:
    sessions: list[FakeSession] = [FakeSession()]
    broadcast = FakeComm()
    clock = Clock()
    bridge = LabBridge(sessions=lambda: [s for s in sessions if not s.closed],
                       broadcast=broadcast, clock=clock)
    yield bridge, sessions, broadcast, clock
    bridge.stop()
