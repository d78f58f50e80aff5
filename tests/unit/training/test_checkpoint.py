"""CheckpointStore: atomic writes, pruning, verified loads, fallback, no pickle.

Sharded (DCP) checkpoints and the refusal of planted pickles in them are tested in
test_checkpoint_sharded.py; S3 itself (moto) in tests/integration/test_s3_checkpoints.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import uuid
import warnings

import cloudpickle
import fsspec
import pytest
import torch

from scalekit.errors import ScalekitError
from scalekit.training.checkpoint import POINTER, CheckpointError, CheckpointInfo, CheckpointStore


def state_for(epoch: int, step: int = 0) -> dict:
    """A small state shaped like the runtime's (tensors, numbers, strings, lists, dicts)."""
    return {
        "format": 1,
        "module": {"w": torch.full((4, 3), float(epoch)), "b": torch.arange(3.0)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(4, 3)}},
                      "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
        "history": [{"epoch": e + 1, "train_loss": 1.0 / (e + 1)} for e in range(epoch)],
        "epoch": epoch,
        "step": step,
        "run_id": "abc",
    }


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path):
    """A fresh folder URL: a local path, or a memory:// folder removed afterwards."""
    if request.param == "file":
        yield str(tmp_path / "ckpts")
        return
    url = f"memory://scalekit-tests/{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def files(store: CheckpointStore) -> list[str]:
    return sorted(str(p).rsplit("/", 1)[-1] for p in store.fs.ls(store.root, detail=False))


def read(store: CheckpointStore, name: str) -> bytes:
    with store.fs.open(store._path(name), "rb") as f:
        return f.read()


def write(store: CheckpointStore, name: str, data: bytes) -> None:
    with store.fs.open(store._path(name), "wb") as f:
        f.write(data)


# -- saving and loading ---------------------------------------------------------------


def test_round_trip_and_layout(url):
    store = CheckpointStore(url, keep=3)
    assert not store.exists()
    assert store.latest_info() is None
    assert store.names() == []

    info = store.save(state_for(4), epoch=4)
    assert isinstance(info, CheckpointInfo)
    assert info.name == "ckpt-000004-00000000.pt"
    assert (info.epoch, info.step) == (4, 0)
    assert info.url == f"{url}/ckpt-000004-00000000.pt"
    assert info.seconds > 0
    assert info.nbytes == len(read(store, info.name))
    assert files(store) == ["ckpt-000004-00000000.pt", POINTER]  # no temporary left

    mid = store.save(state_for(5, step=120), epoch=5, step=120)
    assert mid.name == "ckpt-000005-00000120.pt"
    pointer = store.latest_info()
    assert pointer["name"] == mid.name
    assert (pointer["epoch"], pointer["step"], pointer["nbytes"]) == (5, 120, mid.nbytes)
    assert pointer["sha256"] == mid.sha256
    assert store.exists()

    loaded, loaded_info = store.load_latest()
    assert (loaded_info.epoch, loaded_info.step, loaded_info.sha256) == (5, 120, mid.sha256)
    expected = state_for(5, step=120)
    torch.testing.assert_close(loaded["module"], expected["module"])
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["momentum_buffer"],
                               torch.ones(4, 3))
    assert loaded["history"] == expected["history"]
    assert loaded["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]


def test_a_second_handle_on_the_same_url_sees_the_checkpoints(url):
    CheckpointStore(url).save(state_for(2), epoch=2)
    state, info = CheckpointStore(url).load_latest()  # e.g. after a kernel restart
    assert info.epoch == 2 and state["epoch"] == 2


def test_names_ignore_foreign_and_temporary_files(url):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    write(store, "notes.txt", b"hello")
    write(store, ".ckpt-000009-00000000.pt.deadbeef.tmp", b"half")
    write(store, "ckpt-9.pt", b"not our name")
    assert store.names() == ["ckpt-000001-00000000.pt"]


def test_the_folder_is_created(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    CheckpointStore(str(deep))
    assert deep.is_dir()


def test_storage_options_reach_fsspec(tmp_path):
    store = CheckpointStore(str(tmp_path / "x"), storage_options={"auto_mkdir": True})
    assert store.fs.auto_mkdir is True
    assert store.storage_options == {"auto_mkdir": True}


def test_keep_must_be_positive(tmp_path):
    for keep in (0, -1, "3", 2.5, True, None):
        with pytest.raises(ValueError, match=r"CheckpointStore\.keep: got .*, expected an "
                                             r"integer >= 1"):  # a ConfigError
            CheckpointStore(str(tmp_path), keep=keep)


# -- keep k ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_only_the_newest_k_are_kept(url, keep):
    store = CheckpointStore(url, keep=keep)
    saved = [store.save(state_for(e), epoch=e).name for e in range(1, 6)]
    assert store.names() == saved[-keep:]
    assert store.latest_info()["name"] == saved[-1]
    assert store.load_latest()[1].epoch == 5


def test_mid_epoch_checkpoints_sort_between_epochs(url):
    store = CheckpointStore(url, keep=2)
    store.save(state_for(3), epoch=3)
    store.save(state_for(3, step=40), epoch=3, step=40)
    store.save(state_for(4), epoch=4)
    assert store.names() == ["ckpt-000003-00000040.pt", "ckpt-000004-00000000.pt"]


# -- atomicity: a writer that dies mid-write never changes "latest" ---------------------


def fail_writes_to(store, monkeypatch, suffix, message):
    """Make the write that publishes a file ending in ``suffix`` fail: the rename of its
    temporary on a local disk, the single PUT on an object store (memory:// here)."""
    real_mv, real_pipe = store.fs.mv, store.fs.pipe_file

    def mv(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(message)
        return real_mv(src, dst, *args, **kwargs)

    def pipe_file(path, *args, **kwargs):
        if str(path).endswith(suffix):
            raise OSError(message)
        return real_pipe(path, *args, **kwargs)

    monkeypatch.setattr(store.fs, "mv", mv)
    monkeypatch.setattr(store.fs, "pipe_file", pipe_file)


def test_a_failed_write_of_the_checkpoint_leaves_latest_alone(url, monkeypatch):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    before = read(store, POINTER)

    fail_writes_to(store, monkeypatch, "ckpt-000002-00000000.pt", "disk went away")
    with pytest.raises(OSError, match="disk went away"):
        store.save(state_for(2), epoch=2)
    monkeypatch.undo()

    assert read(store, POINTER) == before
    assert files(store) == ["ckpt-000001-00000000.pt", POINTER]  # no temporary left
    state, info = store.load_latest()
    assert info.epoch == 1 and state["epoch"] == 1


def test_a_failed_pointer_update_keeps_the_previous_latest(url, monkeypatch):
    """Dying between the checkpoint's write and the pointer's: latest is still whole, and
    the uncommitted checkpoint is not the one loaded."""
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    before = read(store, POINTER)

    fail_writes_to(store, monkeypatch, POINTER, "killed")
    with pytest.raises(OSError, match="killed"):
        store.save(state_for(2), epoch=2)
    monkeypatch.undo()

    assert read(store, POINTER) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is damaged: no warning
        state, info = store.load_latest()
    assert info.epoch == 1 and state["epoch"] == 1  # what latest.json names, verified


def test_a_writer_killed_while_writing_leaves_a_temporary_that_is_ignored(tmp_path,
                                                                          monkeypatch):
    """A local disk: the checkpoint is written to a temporary file first."""
    store = CheckpointStore(str(tmp_path / "ckpts"))
    good = store.save(state_for(1), epoch=1)
    before = read(store, POINTER)
    real_open = store.fs.open

    class Dies:
        """A file object whose process "dies" after half of the bytes."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt("killed mid-write")

    def open_(path, mode="rb", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Dies(f) if "w" in mode else f

    monkeypatch.setattr(store.fs, "open", open_)
    with pytest.raises(KeyboardInterrupt):
        store.save(state_for(2), epoch=2)
    monkeypatch.undo()

    leftovers = [n for n in files(store) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt-000002-00000000.pt.")
    assert read(store, POINTER) == before
    assert store.names() == [good.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load_latest()[1].epoch == 1
    # and the next save goes through as usual (the fresh temporary is left alone: its
    # writer could still be running; see the pruning tests below)
    assert store.save(state_for(2), epoch=2).epoch == 2
    assert store.load_latest()[1].epoch == 2


def test_a_stale_temporary_next_to_the_checkpoints_changes_nothing(url):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    write(store, ".ckpt-000002-00000000.pt.0badf00d.tmp", read(store, store.names()[-1])[:100])
    write(store, f".{POINTER}.0badf00d.tmp", b'{"name": "ckpt-000002-')
    assert store.latest_info()["epoch"] == 1
    assert store.load_latest()[1].epoch == 1


# -- damaged newest: fall back to the one before, with a warning ------------------------


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


DAMAGE = {
    "flipped-bytes": flip,
    "truncated": lambda data: data[: len(data) // 3],
    "emptied": lambda data: b"",
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(url, damage):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    newest = store.save(state_for(2), epoch=2)
    write(store, newest.name, damage(read(store, newest.name)))

    with pytest.warns(RuntimeWarning, match="skipped damaged checkpoint") as record:
        state, info = store.load_latest()
    assert (info.epoch, state["epoch"]) == (1, 1)
    message = str(record[0].message)
    assert newest.name in message and "using ckpt-000001-00000000.pt" in message


def test_a_digest_mismatch_in_the_pointer_falls_back(url):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    store.save(state_for(2), epoch=2)
    pointer = json.loads(read(store, POINTER))
    newest = pointer["checkpoints"][0]
    newest["files"][newest["name"]]["sha256"] = "0" * 64
    write(store, POINTER, json.dumps(pointer).encode())

    with pytest.warns(RuntimeWarning, match="does not match the digest in latest.json"):
        state, info = store.load_latest()
    assert info.epoch == 1


def test_a_truncated_newest_without_a_pointer_falls_back(url):
    """latest.json gone or unreadable: the newest file by name is tried, then older."""
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    newest = store.save(state_for(2), epoch=2)
    write(store, newest.name, read(store, newest.name)[:200])
    write(store, POINTER, b'{"name": "ckpt-0000')  # half a pointer
    assert store.latest_info() is None

    with pytest.warns(RuntimeWarning, match="skipped damaged checkpoint"):
        assert store.load_latest()[1].epoch == 1


def test_several_damaged_checkpoints_are_all_skipped(url):
    store = CheckpointStore(url, keep=3)
    for epoch in (1, 2, 3):
        store.save(state_for(epoch), epoch=epoch)
    for name in store.names()[1:]:
        write(store, name, b"garbage")
    with pytest.warns(RuntimeWarning) as record:
        assert store.load_latest()[1].epoch == 1
    assert "ckpt-000003" in str(record[0].message) and "ckpt-000002" in str(record[0].message)


def test_nothing_readable_raises_checkpoint_error(url):
    store = CheckpointStore(url)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        store.load_latest()

    for epoch in (1, 2):
        store.save(state_for(epoch), epoch=epoch)
    for name in store.names():
        write(store, name, b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        store.load_latest()
    assert "ckpt-000001-00000000.pt" in str(info.value)
    assert "ckpt-000002-00000000.pt" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_checkpoint_error_is_a_scalekit_error_and_a_runtime_error(tmp_path):
    """Issue 13 item 21: one ``except ScalekitError`` catches every scalekit failure."""
    assert issubclass(CheckpointError, ScalekitError)
    assert issubclass(CheckpointError, RuntimeError)
    with pytest.raises(ScalekitError, match="no readable checkpoint"):
        CheckpointStore(str(tmp_path)).load_latest()


# -- latest.json records every kept checkpoint, with digests -------------------------------


def test_the_pointer_records_the_kept_checkpoints_and_their_digests(url):
    store = CheckpointStore(url, keep=2)
    for epoch in (1, 2, 3):
        store.save(state_for(epoch), epoch=epoch)
    pointer = store.latest_info()
    kept = pointer["checkpoints"]
    assert [e["name"] for e in kept] == store.names()[::-1]  # newest first, as on disk
    for entry in kept:
        data = read(store, entry["name"])
        assert entry["files"] == {entry["name"]: {"sha256": hashlib.sha256(data).hexdigest(),
                                                  "nbytes": len(data)}}
    assert (pointer["name"], pointer["epoch"]) == (kept[0]["name"], 3)


def test_a_pointer_of_the_earlier_format_still_loads_verified(url):
    """latest.json as scalekit wrote it before it recorded every kept checkpoint."""
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    newest = store.save(state_for(2), epoch=2)
    write(store, POINTER, json.dumps({"name": newest.name, "sha256": newest.sha256,
                                      "epoch": 2, "step": 0, "nbytes": newest.nbytes}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load_latest()[1].epoch == 2
    write(store, newest.name, flip(read(store, newest.name)))
    with pytest.warns(RuntimeWarning, match="does not match the digest"):
        assert store.load_latest()[1].epoch == 1


# -- stale listings and load errors never end a fit ----------------------------------------


class CachedListings:
    """A stand-in for s3fs/gcsfs: directory listings are cached until
    ``invalidate_cache``, so a second process's writes and deletions go unseen."""

    def __init__(self, fs):
        self._fs = fs
        self._listings = {}

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def ls(self, path, detail=False, **kwargs):
        key = (str(path), detail)
        if key not in self._listings:
            self._listings[key] = self._fs.ls(path, detail=detail, **kwargs)
        return self._listings[key]

    def invalidate_cache(self, path=None):
        self._listings.clear()


def test_a_reader_with_a_cached_listing_sees_what_another_process_pruned(url):
    """Issue 13 item 1: the notebook listed the folder, rank 0 then saved and pruned;
    without a fresh listing the notebook tried deleted files and gave up."""
    writer = CheckpointStore(url, keep=2)
    reader = CheckpointStore(url, keep=2)
    reader.fs = CachedListings(reader.fs)
    for epoch in (1, 2):
        writer.save(state_for(epoch), epoch=epoch)
    assert reader.names() == ["ckpt-000001-00000000.pt", "ckpt-000002-00000000.pt"]
    for epoch in (3, 4, 5):  # epochs 1-3 pruned meanwhile
        writer.save(state_for(epoch), epoch=epoch)
    assert reader.names() == ["ckpt-000004-00000000.pt", "ckpt-000005-00000000.pt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, info = reader.load_latest()
    assert info.epoch == 5 and state["epoch"] == 5


def fail_reads_of(store, monkeypatch, suffix, exc):
    """Make every way of reading a file ending in ``suffix`` raise ``exc``."""
    for method in ("open", "cat_file", "cat"):
        real = getattr(store.fs, method)

        def broken(path, *args, _real=real, **kwargs):
            if str(path).endswith(suffix):
                raise exc
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(store.fs, method, broken)


def test_any_error_reading_the_pointer_falls_back_instead_of_ending_the_fit(url, monkeypatch):
    """An object store's ``FileExpired`` (or a timeout) reading latest.json used to
    propagate out of load_latest and end the fit."""
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    store.save(state_for(2), epoch=2)
    fail_reads_of(store, monkeypatch, POINTER, OSError(16, "FileExpired: latest.json changed"))
    with pytest.warns(RuntimeWarning, match="FileExpired.*loaded unverified"):
        state, info = store.load_latest()
    assert info.epoch == 2  # plain checkpoints are written whole: complete, if unverified


@pytest.mark.parametrize("exc", [RuntimeError("connection reset"), PermissionError("denied"),
                                 OSError(16, "FileExpired")], ids=["runtime", "perm", "os"])
def test_any_error_loading_the_newest_checkpoint_falls_back(url, monkeypatch, exc):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    store.save(state_for(2), epoch=2)
    fail_reads_of(store, monkeypatch, "ckpt-000002-00000000.pt", exc)
    with pytest.warns(RuntimeWarning, match=re.escape(f"ckpt-000002-00000000.pt: {exc}")):
        assert store.load_latest()[1].epoch == 1


# -- pruning temporaries ------------------------------------------------------------------


def test_pruning_spares_a_fresh_temporary_and_removes_old_ones(tmp_path):
    """Issue 13 item 13: a concurrent writer's fresh ``.tmp`` survives a save's pruning;
    temporaries older than the grace period (a writer that died) are removed."""
    store = CheckpointStore(str(tmp_path / "ckpts"))
    store.save(state_for(1), epoch=1)
    fresh = ".ckpt-000002-00000000.pt.c0ffee00.tmp"
    old = [".ckpt-000001-00000000.pt.deadbeef.tmp", f".{POINTER}.deadbeef.tmp"]
    write(store, fresh, b"being written right now")
    long_ago = os.path.getmtime(store._path(POINTER)) - 2 * store.tmp_grace_s
    for name in old:
        write(store, name, b"left by a writer that died")
        os.utime(store._path(name), (long_ago, long_ago))

    store.save(state_for(2), epoch=2)
    left = [n for n in files(store) if n.endswith(".tmp")]
    assert left == [fresh]
    # once no writer can be running (the controller, after a failed round): all of them
    assert store.prune_temporaries(grace_s=0.0) == [fresh]
    assert files(store) == ["ckpt-000001-00000000.pt", "ckpt-000002-00000000.pt", POINTER]


# -- no arbitrary pickle ----------------------------------------------------------------

EXECUTED: list[str] = []


def _mark(what: str) -> str:
    EXECUTED.append(what)
    return what


class Payload:
    """Unpickling this would call _mark: what an attacker's checkpoint would do."""

    def __reduce__(self):
        return (_mark, ("payload ran",))


def test_a_pickle_payload_is_refused_and_never_runs(url):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    # a crafted "checkpoint" with a correct name and a matching digest in the pointer
    buffer = io.BytesIO()
    torch.save({"module": {}, "evil": Payload()}, buffer)
    data = buffer.getvalue()
    name = "ckpt-000002-00000000.pt"
    write(store, name, data)
    pointer = json.loads(read(store, POINTER))
    pointer["checkpoints"].insert(0, {"name": name, "epoch": 2, "step": 0, "files": {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "nbytes": len(data)}}})
    write(store, POINTER, json.dumps(pointer).encode())
    EXECUTED.clear()
    with pytest.warns(RuntimeWarning, match="Weights only load failed|weights_only"):
        state, info = store.load_latest()
    assert EXECUTED == []
    assert info.epoch == 1 and "evil" not in state

    # and with no good checkpoint beside it: an error, still without running it
    store.fs.rm(store._path("ckpt-000001-00000000.pt"))
    with pytest.raises(CheckpointError):
        store.load_latest()
    assert EXECUTED == []


def test_saving_something_that_is_not_plain_data_still_cannot_load_it(url):
    store = CheckpointStore(url)
    store.save({"epoch": 1, "obj": Payload()}, epoch=1)
    EXECUTED.clear()
    with pytest.raises(CheckpointError):
        store.load_latest()
    assert EXECUTED == []


# -- memory:// and pickling ---------------------------------------------------------------


def test_memory_url_round_trip():
    url = f"memory://scalekit-tests/{uuid.uuid4().hex}/run"
    try:
        store = CheckpointStore(url, keep=2)
        for epoch in (1, 2, 3):
            store.save(state_for(epoch), epoch=epoch)
        assert store.names() == ["ckpt-000002-00000000.pt", "ckpt-000003-00000000.pt"]
        assert store.load_latest()[0]["epoch"] == 3
        assert store.latest_info()["name"] == "ckpt-000003-00000000.pt"
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        fs.rm(root, recursive=True)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_a_store_pickles_as_its_url(url, dumps):
    store = CheckpointStore(url, keep=2, storage_options={})
    store.save(state_for(1), epoch=1)
    data = dumps(store)
    assert len(data) < 1000  # the URL and options, not a filesystem object
    assert b"ckpt-000001" not in data
    copy = pickle.loads(data)
    assert isinstance(copy, CheckpointStore)
    assert (copy.url, copy.keep, copy.storage_options) == (url, 2, {})
    assert copy.load_latest()[1].epoch == 1  # memory:// works within the same process


def test_reduce_carries_url_keep_and_options(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5, storage_options={"auto_mkdir": True})
    assert store.__reduce__() == (CheckpointStore, (str(tmp_path), 5, {"auto_mkdir": True}))
