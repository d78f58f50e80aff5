"""Fixtures of the magic's tests: a real shell, a fake session factory, an empty registry."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import scalekit.magics as magics_module
import scalekit.session as session_module
import scalekit.session_registry as session_registry
from scalekit.magics import ScalekitMagics

from .fakes import Factory, FakeBackend


@pytest.fixture(autouse=True)
def registry(monkeypatch) -> list:
    """An empty session registry for each test (the process's own is left alone)."""
    entries: list = []
    monkeypatch.setattr(session_registry, "_SESSIONS", entries)
    return entries


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    yield ip
    magics_module.unload_ipython_extension(ip)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def shown() -> list[object]:
    return []


@pytest.fixture
def magic(shell, factory, shown) -> ScalekitMagics:
    return magics_module.load_ipython_extension(shell, factory=factory, display=shown.append)


@pytest.fixture
def api_session(monkeypatch):
    """A session started the way a notebook does with ``sk.cluster(workers=2)``."""
    monkeypatch.setattr(session_module, "make_backend",
                        lambda config, *args, **kwargs: FakeBackend(config))
    session = session_module.cluster(workers=2)
    yield session
    session.close()
