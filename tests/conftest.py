"""Shared fixtures.

- ``local_session``: a real two-worker LocalCluster session, always closed afterwards.
- ``clean_dask_config``: run a test against freshly loaded ``dask.config`` and restore it.
- every test under ``tests/integration`` checks that it left no child process behind
  (Dask worker processes, kernels), so a leak fails the test that caused it.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import psutil
import pytest

INTEGRATION = Path(__file__).parent / "integration"

# multiprocessing's resource tracker lives as long as the test process once any
# process was spawned; it is not a leak.
_LONG_LIVED = ("multiprocessing.resource_tracker",)


def child_processes() -> dict[int, str]:
    """Live descendants of this process (pid -> command line), long-lived helpers excluded."""
    found: dict[int, str] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not any(helper in cmdline for helper in _LONG_LIVED):
            found[proc.pid] = cmdline
    return found


def wait_for_no_new_children(before: set[int], timeout: float = 10.0) -> dict[int, str]:
    """Wait until every child not in ``before`` has exited; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: cmd for pid, cmd in child_processes().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Integration tests must not leave worker processes or kernels running."""
    if INTEGRATION not in Path(str(request.node.path)).parents:
        yield
        return
    before = set(child_processes())
    yield
    left = wait_for_no_new_children(before)
    for pid in left:  # clean up so one leak does not fail every later test too
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"test left {len(left)} process(es) running: {left}"


@pytest.fixture
def clean_dask_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run against the packaged defaults only; restore ``dask.config`` afterwards.

    The user's Dask config files and ``DASK_SCALEKIT__*`` variables are hidden, so the
    tests see what a fresh machine sees. Call ``dask.config.refresh()`` inside the test
    after setting environment variables.
    """
    for name in list(os.environ):
        if name.upper().startswith("DASK_SCALEKIT__"):
            monkeypatch.delenv(name)
    saved = copy.deepcopy(dask.config.config)
    saved_paths = list(dask.config.paths)
    dask.config.paths.clear()  # the same list is refresh()'s default: no config files
    dask.config.refresh()
    try:
        yield
    finally:  # restore the saved dict itself: the environment may not be restored yet
        dask.config.paths[:] = saved_paths
        dask.config.config.clear()
        dask.config.config.update(saved)
        # defaults registered during the test (a first `import distributed`) stay
        for defaults in dask.config.defaults:
            dask.config.update(dask.config.config, copy.deepcopy(defaults), priority="old")


@pytest.fixture
def local_session(request: pytest.FixtureRequest) -> Iterator[object]:
    """A started ``scalekit.session.cluster(workers=2)``; closed whatever the test does.

    Parametrise indirectly to pass other keyword arguments, e.g.
    ``@pytest.mark.parametrize("local_session", [{"workers": 1}], indirect=True)``.
    """
    from scalekit.session import cluster

    kwargs = {"workers": 2, **getattr(request, "param", {})}
    session = cluster(**kwargs)
    try:
        yield session
    finally:
        session.close()
