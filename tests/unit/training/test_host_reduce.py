"""The shared-memory all-reduce, between real processes (a gloo group over a FileStore)."""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing
import os
import queue
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def run_ranks(fn: Callable[..., Any], world: int, tmp_path, *args: Any,
              dies: frozenset[int] = frozenset()) -> list[Any]:
    """Run ``fn(rank, world, tmp_path, *args)`` in ``world`` processes of one gloo group;
    return their results by rank (an error in any rank fails the test with its traceback).

    A rank that exits without answering fails the test at once with its exit code
    (e.g. -7: killed by SIGBUS), unless it is in ``dies`` (its result is then ``None``).
    Every set-up folder a rank created must be gone when the ranks are done.
    """
    os.makedirs(tmp_path, exist_ok=True)  # the FileStore's folder
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, str(tmp_path), args, results))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        out: dict[int, Any] = {}
        created: list[str] = []
        deadline = time.monotonic() + 120
        while len(out) < world - len(dies):
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                gone = [(r, p.exitcode) for r, p in enumerate(procs)
                        if r not in out and r not in dies and p.exitcode is not None]
                if gone and results.empty():
                    time.sleep(0.5)  # an answer put just before exiting may be in flight
                    if results.empty():
                        pytest.fail(f"ranks exited without answering (rank, exit code): {gone}")
                if time.monotonic() > deadline:
                    pytest.fail(f"ranks {sorted(set(range(world)) - set(out))} did not answer")
                continue
            if not ok:
                pytest.fail(f"rank {rank} failed:\n{value}")
            out[rank], made = value
            created += made
        for r in dies:
            procs[r].join(timeout=20)
            assert procs[r].exitcode not in (None, 0), f"rank {r} was meant to die"
        left = [f for f in created if os.path.lexists(f)]
        assert not left, f"set-up folders left behind: {left}"
        return [out.get(r) for r in range(world)]
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join()


def _rank_main(fn, rank, world, tmp, args, results) -> None:
    import datetime

    import torch.distributed as dist

    from scalekit.training import host_reduce

    created: list[str] = []  # the set-up folders this rank made, checked by run_ranks
    create = host_reduce._create

    def recording(base: str, size: int) -> Any:
        made = create(base, size)
        created.append(made[0] if isinstance(made, tuple) else made)
        return made

    host_reduce._create = recording
    try:
        store = dist.FileStore(os.path.join(tmp, "store"), world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        try:
            results.put((rank, True, (fn(rank, world, tmp, *args), created)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def _capture_logs() -> list[str]:
    """Collect this process's host_reduce log messages (INFO and up)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    log = logging.getLogger("scalekit.training.host_reduce")
    log.addHandler(Collect())
    log.setLevel(logging.INFO)
    return messages


@pytest.fixture
def shared():
    """A short folder for the slots and sockets (Unix socket paths must be short)."""
    folder = tempfile.mkdtemp(prefix="skhr-", dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def small_tmpfs():
    """A 1 MiB tmpfs: a /dev/shm far too small for the slots. Mounting needs root;
    without it the tests that need one are skipped (the RLIMIT_FSIZE test covers the
    fallback there)."""
    folder = tempfile.mkdtemp(prefix="skshm-", dir="/tmp")
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", folder],
        capture_output=True, text=True, timeout=30).returncode == 0
    if not mounted:
        os.rmdir(folder)
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", folder], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", folder], capture_output=True, timeout=30)
        os.rmdir(folder)


def _fill(folder: str) -> None:
    """Fill a tmpfs to the last page, as other programs fill /dev/shm."""
    fd = os.open(os.path.join(folder, "filler"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


# -- what the ranks do -------------------------------------------------------------------


def _means(rank, world, tmp, shared):
    from scalekit.training import host_reduce

    host_reduce.SLOT_BYTES = 4096  # tensors below go through in several chunks
    reducer = host_reduce.open_host_reducer(1 << 20, timeout=30, directory=shared)
    assert reducer is not None
    torch.distributed.barrier()  # rank 0 removes the names once every rank is set up
    left_over = os.listdir(shared)
    out = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for n in (1, 1000, 5000):  # one chunk, one full chunk, several chunks
            t = _values(rank, n, dtype)
            reducer.mean_(t)
            out[(str(dtype), n)] = t.float().numpy()  # (tensors would travel as fds)
    reducer.close()
    return left_over, out


def _values(rank: int, n: int, dtype) -> Any:
    return torch.randn(n, generator=torch.Generator().manual_seed(rank * 7919 + n)).to(dtype)


def test_every_rank_gets_the_mean_with_the_same_bits(tmp_path, shared):
    results = run_ranks(_means, 3, tmp_path, shared)
    assert all(left_over == [] for left_over, _ in results)  # names removed after set-up
    for key, mean in results[0][1].items():
        dtype = getattr(torch, key[0].split(".")[1])
        expected = sum((_values(r, key[1], dtype) for r in range(1, 3)), _values(0, key[1], dtype))
        loose = dtype == torch.bfloat16
        torch.testing.assert_close(torch.from_numpy(mean), (expected / 3).float(),
                                   rtol=1e-2 if loose else 1e-6, atol=1e-2 if loose else 1e-6)
        for _, other in results[1:]:
            assert (other[key] == mean).all(), f"ranks disagree on {key}"


def _ddp_step(rank, world, tmp, host, shm=None):
    # the default folder (/dev/shm here, or ``shm`` in its place): what a fit uses
    from skorch import NeuralNetRegressor
    from torch import nn

    from scalekit.training import host_reduce
    from scalekit.training.strategies import DDP, prepare

    logs = _capture_logs()
    if shm is not None:
        host_reduce.shared_dir = lambda: shm

    torch.manual_seed(0)
    net = NeuralNetRegressor(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1)),
                             lr=0.1).initialize()
    par = prepare(DDP(), net, world_size=world, device_ids=None, host_reduce=host)
    X = torch.randn(16, 8, generator=torch.Generator().manual_seed(rank))
    for _ in range(3):
        net.optimizer_.zero_grad()
        par.train_module(X).pow(2).mean().backward()
        net.optimizer_.step()
    transport = par.transport
    par.close()
    return transport, {k: v.numpy().copy() for k, v in net.module_.state_dict().items()}, logs


def test_ddp_through_shared_memory_trains_like_gloo(tmp_path):
    shm = run_ranks(_ddp_step, 2, tmp_path / "a", True)
    gloo = run_ranks(_ddp_step, 2, tmp_path / "b", False)
    assert [t for t, _, _ in shm] == ["shared memory"] * 2
    assert [t for t, _, _ in gloo] == ["gloo"] * 2
    for name, value in shm[0][1].items():
        assert (shm[1][1][name] == value).all(), "replicas drifted apart"
        torch.testing.assert_close(torch.from_numpy(value), torch.from_numpy(gloo[0][1][name]),
                                   rtol=1e-5, atol=1e-6)


def test_ddp_on_a_full_shm_trains_through_gloo_instead_of_dying(tmp_path, small_tmpfs):
    # before posix_fallocate: the sparse slots file fit, the first write found no page
    # and both ranks died of SIGBUS (run_ranks reports exit code -7)
    _fill(small_tmpfs)
    ranks = run_ranks(_ddp_step, 2, tmp_path, True, small_tmpfs)
    assert [t for t, _, _ in ranks] == ["gloo"] * 2
    for name, value in ranks[0][1].items():
        assert (ranks[1][1][name] == value).all(), "replicas drifted apart"
    for rank, (_, _, logs) in enumerate(ranks):
        [why] = [m for m in logs if "through gloo instead of shared memory" in m]
        assert why.startswith(f"rank {rank} averages through gloo"), why
        assert "rank 0 cannot reserve" in why and "No space left on device" in why, why
    assert os.listdir(small_tmpfs) == ["filler"]


def _reserve_then_average(rank, world, tmp, folder, n, fsize_limit=None):
    from scalekit.training import host_reduce

    logs = _capture_logs()
    if fsize_limit is not None and rank == 0:
        # any failure to reserve, where no small tmpfs can be mounted: a file size limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
    reducer = host_reduce.open_host_reducer(n * 4, timeout=30, directory=folder)
    if reducer is not None:  # (only without the fix) writes every slot page
        reducer.mean_(torch.ones(n))
        reducer.close()
    return reducer is None, logs


def test_a_shm_too_small_for_the_slots_falls_back_on_every_rank(tmp_path, small_tmpfs):
    # 2 ranks x 2 buffers x 1 MiB slots = 4 MiB on a 1 MiB tmpfs: posix_fallocate says
    # ENOSPC on rank 0, and every rank hears why
    ranks = run_ranks(_reserve_then_average, 2, tmp_path, small_tmpfs, 1 << 18)
    assert [fell_back for fell_back, _ in ranks] == [True, True]
    for rank, (_, logs) in enumerate(ranks):
        [why] = [m for m in logs if "through gloo instead of shared memory" in m]
        assert why.startswith(f"rank {rank} averages through gloo instead of shared memory: "
                              f"rank 0 cannot reserve 4.0 MiB for the slots in {small_tmpfs}")
        assert "No space left on device" in why and "--shm-size" in why
    assert os.listdir(small_tmpfs) == []  # the half-made folder went too


def test_any_failure_to_reserve_falls_back_on_every_rank_with_the_reason(tmp_path, shared):
    ranks = run_ranks(_reserve_then_average, 2, tmp_path, shared, 1 << 18, 1 << 20)
    assert [fell_back for fell_back, _ in ranks] == [True, True]
    for _, logs in ranks:
        [why] = [m for m in logs if "through gloo instead of shared memory" in m]
        assert "rank 0 cannot reserve 4.0 MiB" in why and "File too large" in why, why
    assert os.listdir(shared) == []


def _peer_dies_during_set_up(rank, world, tmp, shared):
    from scalekit.training import host_reduce

    if rank == 1:  # dies once rank 0 has made the folder, before it listens
        host_reduce._listen = lambda path, world: os._exit(3)
    try:
        host_reduce.open_host_reducer(4096, timeout=30, directory=shared)
    except Exception as exc:  # the collective with the dead peer fails
        return type(exc).__name__, os.listdir(shared)
    return None, os.listdir(shared)


def test_a_rank_dying_during_set_up_leaves_no_folder(tmp_path, shared):
    (error, left), dead = run_ranks(_peer_dies_during_set_up, 2, tmp_path, shared,
                                    dies=frozenset({1}))
    assert dead is None and error is not None  # rank 0 saw the failure
    assert left == [] and os.listdir(shared) == []


def _set_up(rank, world, tmp, shared):
    from scalekit.training import host_reduce

    logs = _capture_logs()
    reducer = host_reduce.open_host_reducer(4096, timeout=30, directory=shared)
    assert reducer is not None
    reducer.close()
    return logs


def _rank_0_killed_in_set_up(rank, world, tmp, shared):
    from scalekit.training import host_reduce

    if rank == 0:  # SIGKILLed once it has made the folder: no finally runs
        host_reduce._map = lambda path, size: os.kill(os.getpid(), signal.SIGKILL)
    try:
        host_reduce.open_host_reducer(4096, timeout=30, directory=shared)
    except Exception as exc:
        return type(exc).__name__
    return None


def test_set_up_removes_the_folders_of_dead_runs_only(tmp_path, shared):
    from scalekit.training import host_reduce

    _, error = run_ranks(_rank_0_killed_in_set_up, 2, tmp_path / "a", shared,
                         dies=frozenset({0}))
    assert error is not None
    [dead] = [os.path.join(shared, n) for n in os.listdir(shared)]  # what a crash leaves
    half = os.path.join(shared, "scalekit-0000000000000001")  # crashed before its file
    os.mkdir(half)
    live = os.path.join(shared, "scalekit-0000000000000002")  # a set-up going on: its
    os.mkdir(live)  # rank 0 holds the lock on the slots file
    lock = os.open(os.path.join(live, "slots"), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    young = os.path.join(shared, "scalekit-0000000000000003")  # created this instant,
    os.mkdir(young)  # not locked yet
    open(os.path.join(young, "slots"), "wb").close()
    other = os.path.join(shared, "other-tool")
    os.mkdir(other)
    old = time.time() - 3600  # an hour: well past the grace period
    for folder in (dead, half, live, other):
        os.utime(folder, (old, old))
    try:
        logs = run_ranks(_set_up, 2, tmp_path / "b", shared)
        assert sorted(os.listdir(shared)) == sorted(
            os.path.basename(f) for f in (live, young, other))
        assert "removed 2 set-up folder(s) of dead runs" in " ".join(logs[0])
        # the same rule, directly: nothing more to remove; the live one once it is over
        assert host_reduce.remove_stale(shared) == []
    finally:
        os.close(lock)
    assert host_reduce.remove_stale(shared) == [live]


def _peer_dies(rank, world, tmp, shared):
    from scalekit.training import host_reduce
    from scalekit.training.policy import is_peer_failure

    reducer = host_reduce.open_host_reducer(4096, timeout=60, directory=shared)
    assert reducer is not None
    reducer.mean_(torch.ones(10))
    if rank == 1:
        reducer.close()  # as a dying process's sockets close
        return None
    started = time.monotonic()
    try:
        reducer.mean_(torch.ones(10))
    except host_reduce.PeerLost as exc:
        return time.monotonic() - started, str(exc), is_peer_failure(exc)
    finally:
        reducer.close()
    return None


def test_a_peer_that_goes_away_fails_the_survivor_at_once(tmp_path, shared):
    (waited, message, peer_failure), _ = run_ranks(_peer_dies, 2, tmp_path, shared)
    assert waited < 30  # the collective timeout is 60 s: the closed socket told it
    assert "rank 0 lost rank 1" in message
    assert peer_failure  # the controller treats it as a lost peer, not a user error


def _on_two_hosts(rank, world, tmp, shared):
    from scalekit.training import host_reduce

    if rank == 1:
        host_reduce.host_identity = lambda: "another-host/boot"
    reducer = host_reduce.open_host_reducer(4096, timeout=30, directory=shared)
    torch.distributed.barrier()
    return reducer, os.listdir(shared)


def test_ranks_on_different_hosts_keep_the_process_group(tmp_path, shared):
    results = run_ranks(_on_two_hosts, 2, tmp_path, shared)
    assert [reducer for reducer, _ in results] == [None, None]
    assert [names for _, names in results] == [[], []]


def _unusable(rank, world, tmp, folder):
    from scalekit.training import host_reduce

    return host_reduce.open_host_reducer(4096, timeout=30, directory=folder)


def test_without_a_usable_folder_every_rank_falls_back(tmp_path, shared):
    # no folder at all; a folder whose socket paths are too long for Unix sockets
    assert run_ranks(_unusable, 2, tmp_path, os.path.join(shared, "missing")) == [None, None]
    deep = os.path.join(shared, "d" * 100)
    os.mkdir(deep)
    assert run_ranks(_unusable, 2, tmp_path / "deep", deep) == [None, None]
    assert os.listdir(deep) == []


def test_one_rank_needs_no_reducer():
    import torch.distributed as dist

    from scalekit.training.host_reduce import open_host_reducer

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert open_host_reducer(4096, timeout=5) is None
    finally:
        dist.destroy_process_group()



def _pickle_mid_training(rank, world, tmp):
    from skorch import NeuralNetRegressor
    from torch import nn

    from scalekit.training.rank import dumps_by_value
    from scalekit.training.strategies import DDP, prepare

    net = NeuralNetRegressor(nn.Linear(8, 1), lr=0.1).initialize()
    par = prepare(DDP(), net, world_size=world, device_ids=None, host_reduce=True)
    par.train_module(torch.randn(4, 8)).pow(2).mean().backward()
    transport = par.transport
    try:
        blob = dumps_by_value(net)  # as Dask pickles a RankSpec to spill it
    finally:
        par.close()
    return transport, len(blob)


def test_a_training_net_pickles_with_its_reducer_closed(tmp_path):
    """Dask may spill the RankSpec whose net is training (DDP's comm hook holds the
    reducer, its shared memory and sockets) when a worker is short of memory: pickling
    must not fail, and the copy's reducer comes back closed and refuses to reduce."""
    import mmap
    import pickle

    from scalekit.training.host_reduce import HostReducer

    assert [t for t, n in run_ranks(_pickle_mid_training, 2, tmp_path) if n > 0] == [
        "shared memory"] * 2
    reducer = HostReducer(0, 2, mmap.mmap(-1, 2 * 2 * 64), 64, {})
    copy = pickle.loads(pickle.dumps(reducer))
    assert (copy.rank, copy.world_size, copy.slot_bytes) == (0, 2, 64)
    with pytest.raises(RuntimeError, match="closed"):
        copy.mean_(torch.ones(4))
    copy.close()
    reducer.close()
