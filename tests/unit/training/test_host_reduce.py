"""The shared-memory all-reduce, between real processes (a gloo group over a FileStore)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def run_ranks(fn: Callable[..., Any], world: int, tmp_path, *args: Any) -> list[Any]:
    """Run ``fn(rank, world, tmp_path, *args)`` in ``world`` processes of one gloo group;
    return their results by rank (an error in any rank fails the test with its traceback)."""
    os.makedirs(tmp_path, exist_ok=True)  # the FileStore's folder
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, str(tmp_path), args, results))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        out: dict[int, Any] = {}
        deadline = time.monotonic() + 120
        while len(out) < world:
            try:
                rank, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"ranks {sorted(set(range(world)) - set(out))} did not answer")
            if not ok:
                pytest.fail(f"rank {rank} failed:\n{value}")
            out[rank] = value
        return [out[r] for r in range(world)]
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join()


def _rank_main(fn, rank, world, tmp, args, results) -> None:
    import torch.distributed as dist

    try:
        store = dist.FileStore(os.path.join(tmp, "store"), world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        try:
            results.put((rank, True, fn(rank, world, tmp, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


@pytest.fixture
def shared():
    """A short folder for the slots and sockets (Unix socket paths must be short)."""
    folder = tempfile.mkdtemp(prefix="skhr-", dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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


def _ddp_step(rank, world, tmp, host):
    # the default folder (/dev/shm here): what a fit uses
    from skorch import NeuralNetRegressor
    from torch import nn

    from scalekit.training.strategies import DDP, prepare

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
    return transport, {k: v.numpy().copy() for k, v in net.module_.state_dict().items()}


def test_ddp_through_shared_memory_trains_like_gloo(tmp_path):
    shm = run_ranks(_ddp_step, 2, tmp_path / "a", True)
    gloo = run_ranks(_ddp_step, 2, tmp_path / "b", False)
    assert [t for t, _ in shm] == ["shared memory"] * 2
    assert [t for t, _ in gloo] == ["gloo"] * 2
    for name, value in shm[0][1].items():
        assert (shm[1][1][name] == value).all(), "replicas drifted apart"
        torch.testing.assert_close(torch.from_numpy(value), torch.from_numpy(gloo[0][1][name]),
                                   rtol=1e-5, atol=1e-6)


def _peer_dies(rank, world, tmp, shared):
    from scalekit.training import host_reduce
    from scalekit.training.rounds import is_peer_failure

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
