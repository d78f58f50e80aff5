"""The local backend and its session against a real LocalCluster with worker processes."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from scalekit.errors import ClusterError, ConfigError, ScalekitError
from scalekit.events import AdaptChanged, ClusterSnapshot, Notice, ScaleRequested
from scalekit.session import ClusterSession, active_sessions, cluster

LOOPBACK = "tcp://127.0.0.1:"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_pids(session: ClusterSession) -> set[int]:
    return set(session.client.run(os.getpid).values())


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def state(session: ClusterSession) -> tuple:
    """What a rejected request must leave unchanged."""
    return (
        sorted(session.client.nthreads()),
        session.backend.requested,
        session.backend.adaptive,
        getattr(session.backend.cluster, "_adaptive", None),
    )


def test_start_binds_loopback_only(local_session):
    s = local_session
    assert s.scheduler_address.startswith(LOOPBACK)
    workers = s.client.nthreads()
    assert len(workers) == 2
    assert all(addr.startswith(LOOPBACK) for addr in workers)
    assert s.dashboard_link is not None and "://127.0.0.1:" in s.dashboard_link
    # worker processes are real processes, children of this one
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert worker_pids(s) <= children
    assert os.getpid() not in worker_pids(s)

    snap = s.snapshot(fresh=True)
    assert snap.status == "running"
    assert snap.n_workers == 2
    assert snap.requested == 2
    assert snap.scheduler_address == s.scheduler_address
    assert snap.dashboard_link == s.dashboard_link
    assert s in active_sessions()


@pytest.mark.parametrize("local_session", [{"workers": 1}], indirect=True)
def test_scale_up_and_down(local_session):
    s = local_session
    requests: list[ScaleRequested] = []
    s.bus.subscribe(lambda e: isinstance(e, ScaleRequested) and requests.append(e))
    assert len(s.client.nthreads()) == 1

    s.scale(3)
    s.wait_for_workers(3, timeout=60)
    assert s.backend.requested == 3
    assert all(a.startswith(LOOPBACK) for a in s.client.nthreads())
    assert len(worker_pids(s)) == 3

    s.scale(1)
    s.wait_for_workers(1, timeout=60)
    assert s.backend.requested == 1
    assert [(e.n, e.source) for e in requests] == [(3, "api"), (1, "api")]
    wait_until(lambda: s.bus.latest(ClusterSnapshot).n_workers == 1, what="a 1-worker snapshot")


def test_adapt_then_stop_adapt(local_session):
    s = local_session
    changes: list[AdaptChanged] = []
    s.bus.subscribe(lambda e: isinstance(e, AdaptChanged) and changes.append(e), replay=False)

    s.adapt(1, 3)
    adaptive = s.backend.cluster._adaptive
    assert s.backend.adaptive == (1, 3)
    assert s.backend.requested is None
    assert adaptive is not None and adaptive.state in ("starting", "running")
    assert (adaptive.minimum, adaptive.maximum) == (1, 3)
    assert changes[-1].enabled and (changes[-1].minimum, changes[-1].maximum) == (1, 3)
    wait_until(lambda: s.snapshot(fresh=True).adaptive == (1, 3), what="adaptive in snapshot")
    assert 1 <= len(s.client.nthreads()) <= 3

    s.stop_adapt()
    assert s.backend.adaptive is None
    assert adaptive.state == "stopped"
    assert not changes[-1].enabled
    n = len(s.client.nthreads())
    assert s.backend.requested == n
    time.sleep(2.0)  # adaptive would have acted by now (interval 1s)
    assert len(s.client.nthreads()) == n


def test_scale_while_adaptive_switches_adaptive_off(local_session):
    s = local_session
    s.adapt(1, 3)
    adaptive = s.backend.cluster._adaptive
    s.scale(2)
    assert s.backend.adaptive is None
    assert adaptive.state == "stopped"
    assert not s.bus.latest(AdaptChanged).enabled
    s.wait_for_workers(2)


@pytest.fixture(scope="module")
def shared_session():
    """One cluster for the rejected-request cases (each leaves it unchanged)."""
    s = cluster(workers=2)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize(
    ("action", "args", "field"),
    [
        ("scale", (0,), "scalekit.cluster.workers"),
        ("scale", (17,), "scalekit.cluster.workers"),  # default max-workers is 16
        ("scale", (-1,), "scalekit.cluster.workers"),
        ("scale", ("two",), "scalekit.cluster.workers"),
        ("adapt", (3, 1), "scalekit.adapt.minimum"),
        ("adapt", (1, 17), "scalekit.adapt.maximum"),
    ],
)
def test_bad_input_raises_and_leaves_the_cluster_as_it_was(shared_session, action, args, field):
    s = shared_session
    before = state(s)
    with pytest.raises(ConfigError) as info:
        getattr(s, action)(*args)
    assert info.value.field == field
    assert isinstance(info.value, ScalekitError) and isinstance(info.value, ValueError)
    # the error also reached the panels as a notice
    notice = s.bus.latest(Notice)
    assert notice.level == "error" and str(info.value) in notice.message
    time.sleep(0.5)
    assert state(s) == before
    assert not s.closed


def test_bad_adapt_while_adaptive_keeps_the_old_bounds(local_session):
    s = local_session
    s.adapt(1, 3)
    with pytest.raises(ConfigError):
        s.adapt(4, 2)
    assert s.backend.adaptive == (1, 3)
    assert s.backend.cluster._adaptive.state in ("starting", "running")


@pytest.mark.parametrize("threads", [2, 3])
def test_worker_environment_suits_torch_and_this_process_env_is_untouched(threads):
    before = dict(os.environ)
    with cluster(workers=1, threads_per_worker=threads) as s:
        s.scale(2)  # workers started by scale() get the same environment
        s.wait_for_workers(2)
        envs = s.client.run(lambda: dict(os.environ))
        during = dict(os.environ)
    after = dict(os.environ)
    assert len(envs) == 2
    for env in envs.values():
        assert "MALLOC_TRIM_THRESHOLD_" not in env
        for var in THREAD_VARS:  # stock Nanny: 1; here: the worker's thread count
            assert env[var] == str(threads), (var, env.get(var))
    # distributed itself sets these two in the parent: PYTHONHASHSEED must be in the
    # environment before a worker is spawned, and __DASK_PARENT_PID names the parent
    allowed = {"PYTHONHASHSEED", "__DASK_PARENT_PID"}
    for now in (during, after):
        changed = {k for k in before.keys() | now.keys() if before.get(k) != now.get(k)}
        assert changed <= allowed, {k: (before.get(k), now.get(k)) for k in changed}


def test_close_leaves_no_worker_processes():
    s = cluster(workers=2)
    pids = worker_pids(s)
    assert len(pids) == 2
    s.close()
    assert s.closed
    assert s not in active_sessions()
    assert s.bus.latest(ClusterSnapshot).status == "closed"
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                               != psutil.STATUS_ZOMBIE for p in pids),
               timeout=10, what="worker processes to exit")
    s.close()  # idempotent
    with pytest.raises(ClusterError):
        s.client  # noqa: B018
    with pytest.raises(ClusterError):
        s.scale(2)
    assert s.snapshot(fresh=True).status == "closed"


def test_context_manager_closes():
    with cluster(workers=1) as s:
        pids = worker_pids(s)
    assert s.closed
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10,
               what="worker processes to exit")



@pytest.mark.parametrize("profile", [False, True])
def test_workers_run_dasks_profiler_only_when_asked(profile):
    import dask.config

    def settings():
        return (dask.config.get("distributed.worker.profile.enabled"),
                dask.config.get("distributed.comm.timeouts.connect"))  # the rest is kept

    with cluster(workers=1, profile=profile) as s:
        (found,) = s.client.run(settings).values()
        assert found == (profile, dask.config.get("distributed.comm.timeouts.connect"))
    # the kernel's own settings are untouched
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert dask.config.get("distributed.admin.tick.interval") == "20ms"
