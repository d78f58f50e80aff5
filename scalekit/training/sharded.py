"""Sharded checkpoints (``torch.distributed.checkpoint``) on fsspec URLs.

Every rank writes its shard straight to its final name inside ``ckpt-...dcp/``; nothing
is renamed (on an object store a "rename" is a copy and delete per object, and a folder
is no object at all). DCP's coordinator writes ``.metadata`` once every shard is written,
rank 0 adds ``meta.pt`` (history, position), and only then does rank 0 write
``latest.json`` recording every file's SHA-256: that one write is the commit point. A
folder the pointer does not record, or whose files do not match it, is never loaded.

Loading reads each file whole, checks it against the manifest, and only then hands it
to DCP; ``.metadata`` is read by :class:`~scalekit.training.integrity.MetadataUnpickler`
and DCP's non-tensor values by ``torch.load(weights_only=True)`` (DCP's own reader and
planner unpickle both freely).
"""

from __future__ import annotations

import io
import pickle
import posixpath
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch.distributed.checkpoint._fsspec_filesystem import FileSystem, FsspecReader, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from scalekit.errors import CheckpointError
from scalekit.training.integrity import (
    Manifest,
    file_digest,
    load_dcp_metadata,
    manifest_digest,
    verify_bytes,
)

if TYPE_CHECKING:
    from scalekit.training.checkpoint import CheckpointStore

METADATA = ".metadata"  # DCP's own file name
META = "meta.pt"  # ours: history, epoch, step, ... (torch.save, loads with weights_only)


class _DirectWriter(FsspecWriter):
    """DCP's fsspec writer, except that ``.metadata`` is written once to its final name
    (DCP writes ``.metadata.tmp`` and renames it: a copy on object stores)."""

    def finish(self, metadata: Any, results: list[list[Any]]) -> None:
        from torch.distributed.checkpoint import filesystem

        metadata.version = getattr(filesystem, "CURRENT_DCP_VERSION", metadata.version)
        metadata.storage_data = {r.index: r.storage_data for rs in results for r in rs}
        metadata.storage_meta = self.storage_meta()
        with self.fs.create_stream(self.fs.concat_path(self.path, METADATA), "wb") as f:
            pickle.dump(metadata, f)


class _VerifiedFiles(FileSystem):
    """DCP's fsspec file access for reading only files of ``files`` (a manifest relative
    to the checkpoint folder ``base``), each read whole and checked first."""

    def __init__(self, fs: Any, base: str, files: Manifest) -> None:
        super().__init__()
        self.fs = fs
        self.base = str(base).rstrip("/")
        self.files = files

    @contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[io.BytesIO]:
        if mode != "rb":
            raise CheckpointError(f"a checkpoint being loaded is not written to ({mode!r})")
        rel = str(path)[len(self.base) + 1:]
        shown = f"{posixpath.basename(self.base)}/{rel}"
        expected = self.files.get(rel)
        if expected is None:
            raise CheckpointError(f"{shown} is not among the files latest.json records")
        self.fs.invalidate_cache(self.base)
        data = self.fs.cat_file(str(path))  # a fresh read, no cached listing involved
        verify_bytes(data, expected, shown)
        yield io.BytesIO(data)


class _VerifiedReader(FsspecReader):
    def __init__(self, url: str, files: Manifest, storage_options: dict[str, Any]) -> None:
        super().__init__(url, **storage_options)
        self.fs = _VerifiedFiles(self.fs.fs, str(self.path), files)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        with self.fs.create_stream(self.fs.concat_path(self.path, METADATA), "rb") as f:
            metadata = load_dcp_metadata(f.read())
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _PlainLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, except that non-tensor values (learning rates, flags, ...) load
    with ``weights_only=True`` instead of DCP's ``weights_only=False``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        import torch
        from torch.distributed.checkpoint._traverse import set_element

        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def save(store: CheckpointStore, model: Any, optimizer: Any, meta: dict[str, Any], *,
         name: str, rank: int) -> Manifest | None:
    """Collective: every rank writes its shard of ``model`` and ``optimizer`` into the
    folder ``name``; rank 0 returns the manifest of every file, the others ``None``.

    Nothing is committed here: the caller writes the pointer.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    initialized = dist.is_available() and dist.is_initialized()
    collective = initialized and dist.get_world_size() > 1
    folder = store._path(name)
    store.fs.invalidate_cache(folder)  # this folder and its parents: no stale listing
    if rank == 0 and store.fs.exists(folder):
        # an uncommitted leftover of a writer that died, or a checkpoint being redone
        # after its successor failed to load: its files are replaced, not mixed
        store.fs.rm(folder, recursive=True)
    if collective:
        dist.barrier()
    state = {"model": get_model_state_dict(model),
             "optim": get_optimizer_state_dict(model, optimizer)}
    writer = _DirectWriter(store._url(name), sync_files=not store.object_store,
                           **store.storage_options)
    with warnings.catch_warnings():  # a world of one saves without a process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        metadata = dcp.save(state, storage_writer=writer, no_dist=not initialized)
    # the ranks hash the shard files between them, then rank 0 collects the digests
    shards = sorted({info.relative_path for info in metadata.storage_data.values()})
    world = dist.get_world_size() if collective else 1
    mine = {f"{name}/{rel}": _entry(store, f"{folder}/{rel}")
            for rel in shards[rank::world]}
    gathered: list[Any] = [None] * world
    if collective:
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    if rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save(meta, buffer)
    store.put(f"{name}/{META}", buffer.getvalue(), atomic=False)
    files: Manifest = {k: v for part in gathered for k, v in part.items()}
    for rel in (METADATA, META):
        files[f"{name}/{rel}"] = _entry(store, f"{folder}/{rel}")
    return files


def _entry(store: CheckpointStore, path: str) -> dict[str, Any]:
    sha, nbytes = file_digest(store.fs, path)
    return {"sha256": sha, "nbytes": nbytes}


def load_meta(store: CheckpointStore, name: str, files: Manifest
              ) -> tuple[dict[str, Any], tuple[int, str]]:
    """In the notebook: verify every file of the committed checkpoint ``name`` and read
    its ``.metadata`` safely (so that a bad one is skipped here, with a fallback, rather
    than found by the ranks); return its ``meta.pt`` with ``"sharded"`` naming the folder
    the ranks load from, and the checkpoint's total size and manifest digest."""
    import torch

    small = {}
    for path, expected in sorted(files.items()):
        base = path.rsplit("/", 1)[-1]
        if base in (META, METADATA):
            small[base] = data = store.fs.cat_file(store._path(path))
            verify_bytes(data, expected, path)
        elif file_digest(store.fs, store._path(path)) != (expected["sha256"], expected["nbytes"]):
            raise CheckpointError(f"{path}: content does not match the digest in latest.json")
    missing = {META, METADATA} - set(small)
    if missing:
        raise CheckpointError(f"sharded checkpoint without its {', '.join(sorted(missing))}")
    load_dcp_metadata(small[METADATA])
    state = torch.load(io.BytesIO(small[META]), weights_only=True, map_location="cpu")
    nbytes = sum(f["nbytes"] for f in files.values())
    return {**state, "sharded": store._url(name)}, (nbytes, manifest_digest(files))


def load(store: CheckpointStore, model: Any, optimizer: Any, url: str) -> None:
    """Collective: load the sharded checkpoint at ``url`` into this rank's model and
    optimizer, reading only files that match what ``latest.json`` records for it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    name = posixpath.basename(url.rstrip("/"))
    files = store.committed_files(name)
    inside = {path[len(name) + 1:]: entry for path, entry in files.items() if "/" in path}
    state = {"model": get_model_state_dict(model),
             "optim": get_optimizer_state_dict(model, optimizer)}
    try:
        with warnings.catch_warnings():  # a world of one loads without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=_VerifiedReader(url, inside, store.storage_options),
                     planner=_PlainLoadPlanner(),
                     no_dist=not (dist.is_available() and dist.is_initialized()))
    except CheckpointException as exc:  # DCP wraps each rank's error: say what it was
        causes = [getattr(f, "exception", f) for f in getattr(exc, "failures", {}).values()]
        detail = "; ".join(f"{type(c).__name__}: {c}" for c in causes) or str(exc)
        raise CheckpointError(f"could not load {url}: {detail}") from exc
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])

