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


# -- processes=False: worker threads in this process ----------------------------------------


def test_in_process_cluster_starts_scales_and_closes():
    # before: LocalCluster refused host="127.0.0.1" for its inproc:// default, and
    # sk.cluster(processes=False) always failed to start
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with cluster(processes=False, workers=1) as s:
        assert s.scheduler_address.startswith(LOOPBACK)
        assert all(addr.startswith(LOOPBACK) for addr in s.client.nthreads())
        assert worker_pids(s) == {os.getpid()}  # threads of this process
        assert {p.pid for p in psutil.Process().children(recursive=True)} <= before

        s.scale(2)
        s.wait_for_workers(2, timeout=60)
        assert worker_pids(s) == {os.getpid()} and s.backend.requested == 2
        s.scale(1)
        s.wait_for_workers(1, timeout=60)
        wait_until(lambda: s.snapshot(fresh=True).n_workers == 1, what="a 1-worker snapshot")
        assert s.snapshot(fresh=True).status == "running"
    assert s.closed and s not in active_sessions()


def test_in_process_worker_fits_with_memory_checkpoints():
    import fsspec
    import torch
    from skorch import NeuralNetClassifier
    from training_models import DigitsMLP, digits

    import scalekit as sk

    X, _, y, _ = digits()

    def make_net():
        torch.manual_seed(0)
        return NeuralNetClassifier(DigitsMLP, module__hidden=32, max_epochs=3, lr=0.1,
                                   batch_size=64, train_split=None, verbose=0)

    url = f"memory://scalekit-tests/in-process-{os.getpid()}-{time.monotonic_ns()}"
    memory = fsspec.filesystem("memory")
    threads = torch.get_num_threads()
    try:
        # two worker threads, one process group: the fit trains on one of them
        with cluster(processes=False, workers=2) as s:
            net = make_net()
            run = sk.fit(net, X, y, cluster=s, checkpoint=url, max_workers=1, show=False)
        assert run.report.world_size == 1
        # rank 0 ran in this process: its checkpoints are in this process's memory
        names = [p.rsplit("/", 1)[-1] for p in memory.ls(url, detail=False)]
        assert "latest.json" in names and "ckpt-000003-00000000.pt" in names
        # the same SGD steps as an ordinary skorch fit (one rank: the whole batch)
        here = make_net()
        torch.set_num_threads(1)  # as the rank did
        here.fit(X, y)
        torch.testing.assert_close(
            torch.tensor(net.history[:, "train_loss"], dtype=torch.float64),
            torch.tensor(here.history[:, "train_loss"], dtype=torch.float64),
            rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(threads)
        if memory.exists(url):
            memory.rm(url, recursive=True)


def test_gpu_workers_need_processes():
    # (sk.cluster first checks that the GPUs exist; the backend refuses the combination
    # before it starts anything, also on a machine with GPUs)
    from scalekit.backends.local import LocalBackend
    from scalekit.config import ClusterConfig

    with pytest.raises(ConfigError, match="scalekit.cluster.processes: got False") as info:
        LocalBackend(ClusterConfig(processes=False, gpus=("0",), workers=1))
    assert "CUDA_VISIBLE_DEVICES" in str(info.value)
