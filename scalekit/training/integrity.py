"""What makes a checkpoint safe to load: file digests, and DCP metadata read without
arbitrary pickle.

Every file a checkpoint consists of is recorded in ``latest.json`` with its SHA-256 and
size (a *manifest*), and checked before anything reads it. That catches damage, files
from two different saves mixed in one folder, a half-written object, and a file swapped
on its own. It does not stop someone who can rewrite ``latest.json`` as well: what keeps
such a person from running code in a loading process is that nothing is unpickled
freely. Plain checkpoints load with ``torch.load(weights_only=True)``; the one pickle DCP
writes (its ``.metadata``) is read by :class:`MetadataUnpickler`, which admits DCP's
metadata classes and the torch values they hold, and refuses anything else before it
is called.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import posixpath
import re
from functools import lru_cache
from typing import Any

from scalekit.errors import CheckpointError

CHUNK = 16 * 2**20  # bytes read at a time while hashing
# a manifest entry: a checkpoint name, optionally one file name inside its folder
_ENTRY = re.compile(r"^ckpt-\d{6}-\d{8}\.(pt|dcp)(/[A-Za-z0-9_][A-Za-z0-9_.-]*|/\.metadata)?$")

Manifest = dict[str, dict[str, Any]]  # relative path -> {"sha256": hex, "nbytes": int}


def digest(data: bytes) -> str:
    """SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


def manifest_digest(files: Manifest) -> str:
    """One digest that stands for a whole manifest (what a sharded checkpoint's
    ``sha256`` in the pointer is)."""
    lines = "".join(f"{p}\t{files[p]['sha256']}\t{files[p]['nbytes']}\n" for p in sorted(files))
    return digest(lines.encode())


def file_digest(fs: Any, path: str) -> tuple[str, int]:
    """SHA-256 and size of the file at ``path``, read in chunks, never from a cached
    listing (a stale one would name an object's old version)."""
    fs.invalidate_cache(posixpath.dirname(path))
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def check_manifest(files: Any, name: str) -> Manifest:
    """``files`` as recorded for checkpoint ``name``, or :class:`CheckpointError` when it
    is not a well-formed manifest of files inside that checkpoint (a pointer that named
    ``../`` paths could make a loader read files elsewhere)."""
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"latest.json records no files for {name}")
    for path, entry in files.items():
        inside = path == name or path.startswith(f"{name}/")
        if not (isinstance(path, str) and inside and _ENTRY.match(path)) or ".." in path:
            raise CheckpointError(f"latest.json records a file outside {name}: {path!r}")
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
              and isinstance(entry.get("nbytes"), int))
        if not ok:
            raise CheckpointError(f"latest.json has a malformed entry for {path!r}")
    return files


def verify_bytes(data: bytes, expected: dict[str, Any] | None, path: str) -> str:
    """The SHA-256 of ``data``; :class:`CheckpointError` unless it is what the manifest
    recorded (``expected``: ``None`` checks nothing)."""
    sha = digest(data)
    if expected is not None and (len(data), sha) != (expected["nbytes"], expected["sha256"]):
        raise CheckpointError(
            f"{path}: content does not match the digest in latest.json "
            f"({len(data)} bytes, {expected['nbytes']} recorded)")
    return sha


# -- DCP's .metadata without arbitrary pickle --------------------------------------------


@lru_cache(maxsize=1)
def _admitted() -> dict[tuple[str, str], Any]:
    """The globals a DCP ``.metadata`` pickle may name: DCP's metadata dataclasses and
    the torch values inside them (sizes, dtypes, layouts, memory formats)."""
    import pathlib

    import torch
    import torch.serialization
    from torch.distributed.checkpoint import filesystem, metadata

    admitted: dict[tuple[str, str], Any] = {
        ("torch", "Size"): torch.Size,
        # looks a layout up by name in a fixed table (torch.strided, ...)
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
        # StorageMeta.checkpoint_id may be a path
        ("pathlib", "PosixPath"): pathlib.PosixPath,
        ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    }
    for name in ("Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                 "ChunkStorageMetadata", "TensorProperties", "StorageMeta",
                 "_MEM_FORMAT_ENCODING"):
        if hasattr(metadata, name):
            admitted[("torch.distributed.checkpoint.metadata", name)] = getattr(metadata, name)
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            admitted[("torch", name)] = value
    return admitted


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_admitted`; any other (such
    as ``os.system`` or ``builtins.eval``) is refused before it could be called."""

    def find_class(self, module: str, name: str) -> Any:
        found = _admitted().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: a DCP .metadata may only hold "
                "torch.distributed.checkpoint's metadata classes")
        return found


def load_dcp_metadata(data: bytes) -> Any:
    """DCP's ``Metadata`` from the bytes of a ``.metadata`` file, read by
    :class:`MetadataUnpickler`; :class:`CheckpointError` for anything else."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        value = MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise CheckpointError(f"unreadable or unsafe .metadata: {exc}") from exc
    if not isinstance(value, Metadata):
        raise CheckpointError(f".metadata holds a {type(value).__name__}, not DCP Metadata")
    return value
