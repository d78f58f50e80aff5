"""Sharded (DCP) checkpoints: written without renames, committed by latest.json with a
digest of every file, never loaded uncommitted, and read without arbitrary pickle.

One process and no process group: DCP saves and loads a world of one, which exercises
the same files, manifest and readers as the ranks of a cluster (tests/integration and
the S3 suite run the collective path).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import uuid
import warnings

import fsspec
import pytest
import torch
from torch import nn

from scalekit.errors import CheckpointError
from scalekit.training.checkpoint import POINTER, CheckpointStore

DCP_1 = "ckpt-000001-00000000.dcp"
DCP_2 = "ckpt-000002-00000000.dcp"


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    if request.param == "file":
        yield str(tmp_path / "ckpts")
        return
    url = f"memory://scalekit-tests/{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def small_model(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model and an SGD optimizer with momentum buffers (one step taken)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def meta_for(epoch: int) -> dict:
    return {"format": 1, "epoch": epoch, "step": 0, "history": [{"epoch": epoch}]}


def read(store: CheckpointStore, name: str) -> bytes:
    return store.fs.cat_file(store._path(name))


def write(store: CheckpointStore, name: str, data: bytes) -> None:
    store.fs.pipe_file(store._path(name), data)


def everything(store: CheckpointStore) -> list[str]:
    prefix = store.root.rstrip("/") + "/"
    return sorted(p[len(prefix):] for p in store.fs.find(store.root, withdirs=False))


def save_two(store: CheckpointStore) -> nn.Module:
    model, optimizer = small_model()
    store.save_sharded(model, optimizer, meta_for(1), epoch=1, step=0, rank=0)
    model2, optimizer2 = small_model(seed=1)
    store.save_sharded(model2, optimizer2, meta_for(2), epoch=2, step=0, rank=0)
    return model2


def record(store: CheckpointStore, path: str) -> None:
    """Rewrite latest.json so that it records ``path``'s current content: what someone
    who can write the folder can always do."""
    pointer = json.loads(read(store, POINTER))
    data = read(store, path)
    for entry in pointer["checkpoints"]:
        if path.startswith(entry["name"] + "/"):
            entry["files"][path] = {"sha256": hashlib.sha256(data).hexdigest(),
                                    "nbytes": len(data)}
    write(store, POINTER, json.dumps(pointer).encode())


# -- layout, manifest, round trip ----------------------------------------------------------


def test_every_file_is_recorded_with_its_digest_and_nothing_is_left_over(url):
    store = CheckpointStore(url)
    model, optimizer = small_model()
    info = store.save_sharded(model, optimizer, meta_for(1), epoch=1, step=0, rank=0)
    assert info.name == DCP_1 and info.url == f"{url}/{DCP_1}"
    assert everything(store) == [f"{DCP_1}/.metadata", f"{DCP_1}/__0_0.distcp",
                                 f"{DCP_1}/meta.pt", POINTER]  # no temporary anywhere
    pointer = store.latest_info()
    assert (pointer["name"], pointer["sharded"], pointer["sha256"]) == (DCP_1, True, info.sha256)
    files = pointer["checkpoints"][0]["files"]
    assert set(files) == {f"{DCP_1}/.metadata", f"{DCP_1}/__0_0.distcp", f"{DCP_1}/meta.pt"}
    for path, entry in files.items():
        data = read(store, path)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "nbytes": len(data)}
    assert info.nbytes == sum(e["nbytes"] for e in files.values())


def test_a_sharded_checkpoint_round_trips(url):
    store = CheckpointStore(url)
    saved = save_two(store)
    state, info = store.load_latest()
    assert info.name == DCP_2 and state["epoch"] == 2 and state["sharded"] == f"{url}/{DCP_2}"
    model, optimizer = small_model(seed=7)
    store.load_sharded(model, optimizer, state["sharded"])
    for (name, a), b in zip(model.named_parameters(), saved.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert all("momentum_buffer" in s for s in optimizer.state.values())


def test_object_stores_are_written_without_renames(monkeypatch):
    """Issue 13 item 2: on an object store a rename is a copy and a delete (of a folder:
    nothing at all, hence S3's NoSuchKey), so every file goes to its final name once."""
    url = f"memory://scalekit-tests/{uuid.uuid4().hex}"
    store = CheckpointStore(url)
    assert store.object_store

    def no_rename(*args, **kwargs):
        raise AssertionError("renamed on an object store")

    for method in ("mv", "rename", "copy"):
        monkeypatch.setattr(store.fs, method, no_rename)
    try:
        store.save({"format": 1, "epoch": 1, "step": 0}, epoch=1)
        save_two(store)
        assert store.load_latest()[1].name == DCP_2
        assert not [p for p in everything(store) if p.endswith(".tmp")]
    finally:
        monkeypatch.undo()
        store.fs.rm(store.root, recursive=True)


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_keeps_the_newest_sharded_checkpoints(url, keep):
    store = CheckpointStore(url, keep=keep)
    model, optimizer = small_model()
    for epoch in (1, 2, 3):
        store.save_sharded(model, optimizer, meta_for(epoch), epoch=epoch, step=0, rank=0)
    expected = [f"ckpt-{e:06d}-00000000.dcp" for e in (1, 2, 3)][-keep:]
    assert store.names() == expected
    assert [e["name"] for e in store.latest_info()["checkpoints"]] == expected[::-1]


# -- the pointer is the commit point ---------------------------------------------------------


def test_a_folder_latest_json_does_not_record_is_never_loaded(url, monkeypatch):
    """Shards go straight to their final names, so a writer that dies leaves a folder that
    may look whole: only the pointer says it is."""
    store = CheckpointStore(url)
    model, optimizer = small_model()
    store.save_sharded(model, optimizer, meta_for(1), epoch=1, step=0, rank=0)
    real_put = store.put

    def put(name, data, **kwargs):
        if name == POINTER:
            raise OSError("killed before the commit")
        return real_put(name, data, **kwargs)

    monkeypatch.setattr(store, "put", put)
    with pytest.raises(OSError, match="killed before the commit"):
        store.save_sharded(model, optimizer, meta_for(2), epoch=2, step=0, rank=0)
    monkeypatch.undo()
    assert store.names() == [DCP_1, DCP_2]  # every file of epoch 2 is there ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load_latest()[1].name == DCP_1  # ... yet epoch 1 is what loads
    with pytest.raises(CheckpointError, match="not committed"):
        store.load_sharded(model, optimizer, f"{url}/{DCP_2}")

    store.fs.rm(store._path(POINTER))  # no pointer at all: no sharded checkpoint loads
    with pytest.raises(CheckpointError, match=f"{DCP_2}: not committed"):
        store.load_latest()


def test_a_damaged_shard_is_found_before_loading_and_skipped(url):
    store = CheckpointStore(url)
    save_two(store)
    shard = f"{DCP_2}/__0_0.distcp"
    data = bytearray(read(store, shard))
    data[len(data) // 2] ^= 0xFF
    write(store, shard, bytes(data))
    with pytest.warns(RuntimeWarning, match=f"{shard}: content does not match the digest"):
        assert store.load_latest()[1].name == DCP_1
    model, optimizer = small_model()
    with pytest.raises(CheckpointError, match="does not match the digest"):
        store.load_sharded(model, optimizer, f"{url}/{DCP_2}")


# -- no code runs from a checkpoint (issue 13 item 4) -----------------------------------------


class SystemCall:
    """Unpickling this runs a shell command: what a planted checkpoint file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("rerecorded", [False, True], ids=["digest-stale", "digest-forged"])
def test_a_planted_metadata_pickle_never_runs(url, tmp_path, rerecorded):
    """A ``.metadata`` replaced by a pickle that calls ``os.system``: refused by its digest,
    and, when latest.json was rewritten to match it, by the restricted unpickler; the
    checkpoint is skipped with a clear error and the command never runs."""
    store = CheckpointStore(url)
    save_two(store)
    marker = tmp_path / "payload-ran"
    planted = f"{DCP_2}/.metadata"
    write(store, planted, pickle.dumps(SystemCall(f"touch {shlex.quote(str(marker))}")))
    if rerecorded:
        record(store, planted)
    why = "refused to unpickle posix.system" if rerecorded else "does not match the digest"

    with pytest.warns(RuntimeWarning, match=why):
        state, info = store.load_latest()
    assert info.name == DCP_1 and state["epoch"] == 1
    model, optimizer = small_model()
    with pytest.raises(CheckpointError, match=why):
        store.load_sharded(model, optimizer, f"{url}/{DCP_2}")
    assert not marker.exists()

    if url.startswith("/"):  # the control: DCP's own reader runs the planted file
        from torch.distributed.checkpoint import FileSystemReader

        with pytest.raises(AttributeError):  # os.system's return value is no Metadata
            FileSystemReader(store._path(DCP_2)).read_metadata()
        assert marker.exists()


def test_a_planted_pickle_among_the_shards_values_never_runs(url, tmp_path):
    """DCP stores non-tensor values (learning rates, flags) as pickles and its planner
    loads them with ``weights_only=False``; here one of them runs a command."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    store = CheckpointStore(url)
    save_two(store)
    marker = tmp_path / "payload-ran"
    model, optimizer = small_model()
    optim = get_optimizer_state_dict(model, optimizer)
    optim["param_groups"][0]["lr"] = SystemCall(f"touch {shlex.quote(str(marker))}")
    store.fs.rm(store._path(DCP_2), recursive=True)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: "assuming the intent is to save in a single
        dcp.save({"model": get_model_state_dict(model), "optim": optim},  # process"
                 storage_writer=FsspecWriter(f"{url}/{DCP_2}"))
    for path in store.fs.find(store._path(DCP_2)):
        record(store, f"{DCP_2}/{path.rsplit('/', 1)[-1]}")
    assert not marker.exists()

    target, target_optimizer = small_model(seed=3)
    with pytest.raises(Exception, match="[Ww]eights.only|weights_only"):
        store.load_sharded(target, target_optimizer, f"{url}/{DCP_2}")
    assert not marker.exists()
