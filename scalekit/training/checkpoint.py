"""Checkpoints on any fsspec URL: atomic, pruned, verified, loaded without pickle.

Layout under the store's URL::

    ckpt-000004-00000000.pt     # epoch 4, step 0 (an epoch boundary)
    ckpt-000005-00000120.pt     # mid-epoch: epoch 5, 120 steps done
    ckpt-000006-00000000.dcp/   # sharded (FSDP): torch.distributed.checkpoint, one file
                                #   per rank, plus meta.pt (history, epoch, step)
    latest.json                 # {"name": ..., "sha256": ..., "epoch": ..., "step": ...}

A checkpoint is written to a temporary name and renamed into place (a single ``put`` on
object stores, which is atomic there), then ``latest.json`` is replaced the same way, so
"latest" never names a half-written file. Loading verifies the SHA-256 recorded in the
pointer and uses ``torch.load(weights_only=True)``; a damaged newest checkpoint is
skipped with a warning and the one before it used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import posixpath
import re
import time
import uuid
import warnings
from typing import Any

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{6})-(\d{8})\.(pt|dcp)$")
_META = "meta.pt"  # inside a sharded checkpoint folder: history, epoch, step, ...
POINTER = "latest.json"


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is and what it holds."""

    url: str
    name: str
    epoch: int  # epochs completed
    step: int  # steps completed inside the next epoch (0 at an epoch boundary)
    nbytes: int
    sha256: str
    seconds: float = 0.0  # how long the write took


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


class CheckpointStore:
    """A folder of checkpoints at ``url`` (local path, ``s3://``, ``gs://``, ``memory://``).

    Parameters
    ----------
    url : str
        Folder URL; created if missing. Credentials come through ``storage_options``
        exactly as fsspec takes them.
    keep : int
        How many checkpoints to keep (oldest are deleted after each save).
    storage_options : dict, optional
        Passed to ``fsspec.core.url_to_fs``.
    """

    def __init__(self, url: str, keep: int = 3, storage_options: dict[str, Any] | None = None
                 ) -> None:
        import fsspec

        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.url = str(url)
        self.keep = keep
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.fs.makedirs(self.root, exist_ok=True)

    def __reduce__(self) -> tuple[Any, ...]:  # ship the URL, not an open filesystem
        return (CheckpointStore, (self.url, self.keep, self.storage_options))

    # -- writing -------------------------------------------------------------------------
    def save(self, state: dict[str, Any], *, epoch: int, step: int = 0) -> CheckpointInfo:
        """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
        import torch

        started = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"ckpt-{epoch:06d}-{step:08d}.pt"
        self._write_atomic(name, data)
        info = CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                              nbytes=len(data), sha256=digest)
        pointer = {"name": name, "sha256": digest, "epoch": epoch, "step": step,
                   "nbytes": len(data), "time": time.time()}
        self._write_atomic(POINTER, json.dumps(pointer).encode())
        self._prune()
        return dataclasses.replace(info, seconds=time.perf_counter() - started)

    def save_sharded(self, model: Any, optimizer: Any, meta: dict[str, Any], *, epoch: int,
                     step: int, rank: int) -> CheckpointInfo | None:
        """Collective: every rank writes its own shard (no gather through one process).

        The shards go to a temporary folder that rank 0 renames into place once
        ``torch.distributed.checkpoint`` has written its metadata (which it does after
        every rank finished), then ``latest.json`` is replaced. A checkpoint written at
        one world size loads at any other (DCP reshards on load).
        """
        import torch
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        started = time.perf_counter()
        name = f"ckpt-{epoch:06d}-{step:08d}.dcp"
        tmp = self._path(f".{name}.tmp")
        if rank == 0 and self.fs.exists(tmp):
            self.fs.rm(tmp, recursive=True)  # left by a writer that died
        dist.barrier()
        state = {"model": get_model_state_dict(model),
                 "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, storage_writer=FsspecWriter(self._url(f".{name}.tmp"),
                                                    **self.storage_options))
        if rank != 0:
            return None
        buffer = io.BytesIO()
        torch.save(meta, buffer)
        with self.fs.open(posixpath.join(tmp, _META), "wb") as f:
            f.write(buffer.getvalue())
        final = self._path(name)
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.mv(tmp, final, recursive=True)
        nbytes = sum(self.fs.du(final, total=False).values()) if hasattr(self.fs, "du") else 0
        pointer = {"name": name, "sha256": "", "epoch": epoch, "step": step, "nbytes": nbytes,
                   "sharded": True, "time": time.time()}
        self._write_atomic(POINTER, json.dumps(pointer).encode())
        self._prune()
        return CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                              nbytes=nbytes, sha256="", seconds=time.perf_counter() - started)

    def load_sharded(self, model: Any, optimizer: Any, url: str) -> None:
        """Collective: load a sharded checkpoint into this rank's (sharded) model."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = {"model": get_model_state_dict(model),
                 "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, storage_reader=FsspecReader(url, **self.storage_options))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])

    def _write_atomic(self, name: str, data: bytes) -> None:
        final = self._path(name)
        tmp = self._path(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        try:
            self.fs.mv(tmp, final)
        except Exception:
            self.fs.rm(tmp)
            raise

    def _prune(self) -> None:
        # a writer that was killed leaves its temporary file or folder behind
        for path in self.fs.ls(self.root, detail=False):
            base = posixpath.basename(str(path).rstrip("/"))
            if base.startswith(".ckpt-") and base.endswith(".tmp"):
                try:
                    self.fs.rm(self._path(base), recursive=True)
                except FileNotFoundError:
                    pass
        for name in self.names()[: -self.keep]:
            try:
                self.fs.rm(self._path(name), recursive=name.endswith(".dcp"))
            except FileNotFoundError:
                pass

    # -- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Checkpoint file names, oldest first."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        names = [posixpath.basename(str(e).rstrip("/")) for e in entries]
        return sorted(n for n in names if _NAME.match(n))

    def latest_info(self) -> dict[str, Any] | None:
        """The pointer's content, or ``None`` when nothing was saved."""
        try:
            with self.fs.open(self._path(POINTER), "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def exists(self) -> bool:
        return bool(self.names())

    def load_latest(self) -> tuple[dict[str, Any], CheckpointInfo]:
        """The newest readable checkpoint; falls back past damaged ones with a warning."""
        pointer = self.latest_info() or {}
        candidates = self.names()[::-1]
        named = pointer.get("name")
        if named in candidates:  # the pointer's choice first, verified by its digest
            candidates.remove(named)
            candidates.insert(0, named)
        problems = []
        for name in candidates:
            expected = pointer.get("sha256") if name == named else None
            try:
                state, info = self._load(name, expected)
            except Exception as exc:  # damaged: try the one before
                problems.append(f"{name}: {exc}")
                continue
            if problems:
                warnings.warn(
                    f"skipped damaged checkpoint(s) in {self.url}: {'; '.join(problems)}; "
                    f"using {name}", RuntimeWarning, stacklevel=2,
                )
            return state, info
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise CheckpointError(f"no readable checkpoint in {self.url}{detail}")

    def _load(self, name: str, expected_sha: str | None) -> tuple[dict[str, Any], CheckpointInfo]:
        import torch

        sharded = name.endswith(".dcp")
        path = posixpath.join(self._path(name), _META) if sharded else self._path(name)
        with self.fs.open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha and digest != expected_sha:
            raise CheckpointError("content does not match the digest in latest.json")
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if sharded:
            if not self.fs.exists(posixpath.join(self._path(name), ".metadata")):
                raise CheckpointError("sharded checkpoint without its .metadata")
            state = {**state, "sharded": self._url(name)}
        match = _NAME.match(name)
        assert match is not None
        info = CheckpointInfo(url=self._url(name), name=name, epoch=int(match[1]),
                              step=int(match[2]), nbytes=len(data), sha256=digest)
        return state, info

    # -- paths ---------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def _url(self, name: str) -> str:
        return posixpath.join(self.url.rstrip("/"), name)
