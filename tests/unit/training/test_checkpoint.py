"""CheckpointStore: atomic writes, pruning, verified loads, fallback, no pickle."""

from __future__ import annotations

import io
import json
import pickle
import uuid
import warnings

import cloudpickle
import fsspec
import pytest
import torch

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
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        CheckpointStore(str(tmp_path), keep=0)


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


def test_a_failed_rename_of_the_checkpoint_leaves_latest_alone(url, monkeypatch):
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    before = read(store, POINTER)

    def broken_mv(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(store.fs, "mv", broken_mv)
    with pytest.raises(OSError, match="disk went away"):
        store.save(state_for(2), epoch=2)
    monkeypatch.undo()

    assert read(store, POINTER) == before
    assert files(store) == ["ckpt-000001-00000000.pt", POINTER]  # the temporary is gone
    state, info = store.load_latest()
    assert info.epoch == 1 and state["epoch"] == 1


def test_a_failed_pointer_update_keeps_the_previous_latest(url, monkeypatch):
    """Dying between the checkpoint's rename and the pointer's: latest is still whole."""
    store = CheckpointStore(url)
    store.save(state_for(1), epoch=1)
    before = read(store, POINTER)
    real_mv = store.fs.mv

    def mv(src, dst, *args, **kwargs):
        if str(dst).endswith(POINTER):
            raise OSError("killed")
        return real_mv(src, dst, *args, **kwargs)

    monkeypatch.setattr(store.fs, "mv", mv)
    with pytest.raises(OSError, match="killed"):
        store.save(state_for(2), epoch=2)
    monkeypatch.undo()

    assert read(store, POINTER) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is damaged: no warning
        state, info = store.load_latest()
    assert info.epoch == 1 and state["epoch"] == 1  # what latest.json names, verified


def test_a_writer_killed_while_writing_leaves_a_temporary_that_is_ignored(url, monkeypatch):
    store = CheckpointStore(url)
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
    # and the next save goes through as usual
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
    pointer["sha256"] = "0" * 64
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
    import hashlib

    write(store, POINTER, json.dumps({"name": name, "sha256": hashlib.sha256(data).hexdigest(),
                                      "epoch": 2, "step": 0}).encode())
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
