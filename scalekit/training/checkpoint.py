"""Checkpoints on any fsspec URL: committed by one pointer write, pruned, verified before
they are read, and loaded without arbitrary pickle.

Layout under the store's URL::

    ckpt-000004-00000000.pt     # epoch 4, step 0 (an epoch boundary)
    ckpt-000005-00000120.pt     # mid-epoch: epoch 5, 120 steps done
    ckpt-000006-00000000.dcp/   # sharded (FSDP): torch.distributed.checkpoint, one file
                                #   per rank, .metadata, meta.pt (history, epoch, step)
    latest.json                 # the commit point: the kept checkpoints, newest first,
                                #   each with the SHA-256 and size of each of its files

A plain checkpoint is written whole under its final name: on a local disk through a
temporary file and a rename, on an object store (``s3://``, ``gs://``, ...) with one PUT,
which is atomic there (nothing is ever renamed on an object store: a "rename" is a copy
and a delete per object). A sharded one is written file by file into its folder (see
:mod:`.sharded`). Then ``latest.json`` is replaced the same way, and that one write
commits the checkpoint: a crash at any moment leaves the previous pointer, naming
complete, verified checkpoints.

Loading reads fresh listings (object-store clients cache them, and an older listing
names files that pruning deleted since), tries the committed checkpoints newest first,
checks every file against ``latest.json`` before reading it (:mod:`.integrity`), and
loads with ``torch.load(weights_only=True)``; a checkpoint that fails in any way is
skipped with a warning and the one before it used.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import re
import time
import uuid
import warnings
from typing import Any

from scalekit.errors import CheckpointError
from scalekit.training.integrity import check_manifest, digest, manifest_digest, verify_bytes

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{6})-(\d{8})\.(pt|dcp)$")
POINTER = "latest.json"
FORMAT = 2  # of latest.json: 1 recorded only the newest checkpoint's digest
# object stores: writes of whole objects are atomic, renames are copies
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss",
                            "r2", "memory"})
TMP_GRACE_S = 3600.0  # a temporary file younger than this may belong to a live writer

__all__ = ["POINTER", "CheckpointError", "CheckpointInfo", "CheckpointStore"]


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is and what it holds."""

    url: str
    name: str
    epoch: int  # epochs completed
    step: int  # steps completed inside the next epoch (0 at an epoch boundary)
    nbytes: int
    sha256: str  # of the file; of the manifest (integrity.manifest_digest) when sharded
    seconds: float = 0.0  # how long the write took


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
        Passed to ``fsspec.core.url_to_fs`` here and wherever the store is unpickled
        (the workers).

    Attributes
    ----------
    object_store : bool
        Whether the URL is an object store, written without renames.
    tmp_grace_s : float
        Temporary files younger than this are left alone by pruning: they may belong
        to a writer that is still running.
    """

    tmp_grace_s: float = TMP_GRACE_S

    def __init__(self, url: str, keep: int = 3, storage_options: dict[str, Any] | None = None
                 ) -> None:
        import fsspec

        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            from scalekit.errors import ConfigError

            raise ConfigError("CheckpointStore.keep", keep, "an integer >= 1",
                              "It is how many of the newest checkpoints are kept.")
        self.url = str(url)
        self.keep = keep
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        protocols = self.fs.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        self.object_store = bool(_OBJECT_STORES.intersection(protocols))
        self.fs.makedirs(self.root, exist_ok=True)

    def __reduce__(self) -> tuple[Any, ...]:  # ship the URL, not an open filesystem
        return (CheckpointStore, (self.url, self.keep, self.storage_options))

    # -- writing -------------------------------------------------------------------------
    def save(self, state: dict[str, Any], *, epoch: int, step: int = 0) -> CheckpointInfo:
        """Write ``state`` (tensors, numbers, strings, lists, dicts) and commit it."""
        import torch

        started = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        name = f"ckpt-{epoch:06d}-{step:08d}.pt"
        self.put(name, data)
        entry = self._commit(name, epoch, step,
                             {name: {"sha256": digest(data), "nbytes": len(data)}})
        return CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                              nbytes=len(data), sha256=entry["sha256"],
                              seconds=time.perf_counter() - started)

    def save_sharded(self, model: Any, optimizer: Any, meta: dict[str, Any], *, epoch: int,
                     step: int, rank: int) -> CheckpointInfo | None:
        """Collective: every rank writes its own shard (no gather through one process).

        The shards go straight to their final names in ``ckpt-...dcp/``; once DCP has
        written its ``.metadata`` and rank 0 its ``meta.pt``, rank 0 commits the folder by
        replacing ``latest.json`` (with every file's digest). A checkpoint written at one
        world size loads at any other (DCP reshards on load). Rank 0 gets the info, the
        other ranks ``None``.
        """
        from scalekit.training import sharded

        started = time.perf_counter()
        name = f"ckpt-{epoch:06d}-{step:08d}.dcp"
        files = sharded.save(self, model, optimizer, meta, name=name, rank=rank)
        if files is None:
            return None
        entry = self._commit(name, epoch, step, files)
        return CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                              nbytes=entry["nbytes"], sha256=entry["sha256"],
                              seconds=time.perf_counter() - started)

    def load_sharded(self, model: Any, optimizer: Any, url: str) -> None:
        """Collective: load a committed sharded checkpoint into this rank's (sharded)
        model, every file checked against ``latest.json`` first."""
        from scalekit.training import sharded

        sharded.load(self, model, optimizer, url)

    def put(self, name: str, data: bytes, *, atomic: bool = True) -> None:
        """Write ``data`` to ``name`` (relative to the store) in one piece.

        ``atomic``: readers see the old content or the new, never a part (a temporary file
        and a rename on a local disk; a single PUT, atomic by itself, on object stores).
        Files inside an uncommitted sharded folder need not be: the pointer commits them.
        """
        final = self._path(name)
        if self.object_store or not atomic:
            self.fs.pipe_file(final, data)
            return
        tmp = self._path(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        try:
            self.fs.mv(tmp, final)
        except Exception:
            self.fs.rm(tmp)
            raise

    def _commit(self, name: str, epoch: int, step: int, files: dict[str, Any]
                ) -> dict[str, Any]:
        """Replace ``latest.json`` so that it records ``name`` as the newest checkpoint,
        then prune what it no longer records."""
        sharded = name.endswith(".dcp")
        entry = {"name": name, "epoch": epoch, "step": step, "sharded": sharded,
                 "nbytes": sum(f["nbytes"] for f in files.values()),
                 "sha256": manifest_digest(files) if sharded else files[name]["sha256"],
                 "files": files}
        pointer, problem = self._read_pointer()
        previous = self._entries(pointer)
        # a checkpoint redone after a newer one failed to load supersedes that newer one
        kept = [entry] + [e for e in previous if _position(e["name"]) < (epoch, step)]
        kept = kept[: self.keep]
        summary = {k: entry[k] for k in ("name", "sha256", "epoch", "step", "nbytes", "sharded")}
        record = {"format": FORMAT, **summary, "time": time.time(), "checkpoints": kept}
        self.put(POINTER, json.dumps(record).encode())
        if problem is not None:
            # what the old pointer recorded is unknown: delete no checkpoint
            logger.warning("not pruning %s: %s", self.url, problem)
            self.prune_temporaries()
        else:
            self._prune({e["name"] for e in kept})
        return entry

    def prune_temporaries(self, grace_s: float | None = None) -> list[str]:
        """Delete temporary files left by writers that died, once they are ``grace_s``
        seconds old (default :attr:`tmp_grace_s`; 0: all, for when no writer can be
        running). Returns the names deleted."""
        grace = self.tmp_grace_s if grace_s is None else grace_s
        now = time.time()
        removed = []
        for base in self._listing():
            if not (base.endswith(".tmp") and base.startswith((".ckpt-", f".{POINTER}."))):
                continue
            path = self._path(base)
            if grace > 0:
                try:
                    age = now - self.fs.modified(path).timestamp()
                except Exception:  # no age known (a pseudo-folder on an object store)
                    continue
                if age < grace:
                    continue  # perhaps a live writer's
            try:
                self.fs.rm(path, recursive=True)
                removed.append(base)
            except FileNotFoundError:
                pass
        return removed

    def _prune(self, kept: set[str]) -> None:
        self.prune_temporaries()
        for name in self.names():
            if name not in kept:
                try:
                    self.fs.rm(self._path(name), recursive=name.endswith(".dcp"))
                except FileNotFoundError:
                    pass

    # -- reading -------------------------------------------------------------------------
    def _listing(self) -> list[str]:
        self.fs.invalidate_cache(self.root)  # a cached listing names deleted files
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return [posixpath.basename(str(e).rstrip("/")) for e in entries]

    def names(self) -> list[str]:
        """Checkpoint names in the folder (committed or not), oldest first."""
        return sorted(n for n in self._listing() if _NAME.match(n))

    def _read_pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(pointer, problem)``: a fresh read of ``latest.json``; ``(None, None)`` when
        there is none, ``(None, why)`` when it cannot be read."""
        self.fs.invalidate_cache(self.root)
        try:
            raw = self.fs.cat_file(self._path(POINTER))
        except FileNotFoundError:
            return None, None
        except Exception as exc:  # a transient store error, or a damaged object
            return None, f"{POINTER}: {type(exc).__name__}: {exc}"
        try:
            pointer = json.loads(raw)
            if not isinstance(pointer, dict) or not isinstance(pointer.get("name"), str):
                raise ValueError("not a pointer")
        except ValueError as exc:
            return None, f"{POINTER}: unreadable ({exc})"
        return pointer, None

    @staticmethod
    def _entries(pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The committed checkpoints a pointer records, newest first."""
        if pointer is None:
            return []
        listed = pointer.get("checkpoints")
        if isinstance(listed, list):
            return [e for e in listed if isinstance(e, dict) and isinstance(e.get("name"), str)
                    and _NAME.match(e["name"])]
        # format 1 recorded the newest checkpoint only, a sharded one without digests
        name = pointer["name"]
        files = None
        if name.endswith(".pt") and pointer.get("sha256"):
            files = {name: {"sha256": pointer["sha256"], "nbytes": pointer.get("nbytes")}}
        return [{"name": name, "files": files}] if _NAME.match(name) else []

    def latest_info(self) -> dict[str, Any] | None:
        """The pointer's content (read afresh), or ``None`` when nothing was saved or it
        cannot be read."""
        return self._read_pointer()[0]

    def committed_files(self, name: str) -> dict[str, Any]:
        """The manifest ``latest.json`` records for checkpoint ``name`` (read afresh);
        :class:`CheckpointError` when it records none."""
        pointer, problem = self._read_pointer()
        for entry in self._entries(pointer):
            if entry["name"] == name:
                return check_manifest(entry.get("files"), name)
        raise CheckpointError(f"{name} in {self.url} is not committed in {POINTER}"
                              + (f" ({problem})" if problem else ""))

    def exists(self) -> bool:
        return bool(self.names())

    def load_latest(self) -> tuple[dict[str, Any], CheckpointInfo]:
        """The newest checkpoint that loads; falls back past any that fail, with a warning.

        Committed checkpoints come first, newest first, each verified against
        ``latest.json``. Only if none loads are plain checkpoints that the pointer does not
        record tried (complete, as they are written whole, but unverified: a pointer that
        was lost, or a writer that died between a checkpoint and its pointer); a sharded
        checkpoint is never loaded without its record.
        """
        pointer, problem = self._read_pointer()
        problems = [problem] if problem else []
        tried = set()
        for entry in self._entries(pointer):
            tried.add(entry["name"])
            try:
                return self._chosen(*self._load_committed(entry), problems)
            except Exception as exc:  # damaged, missing, refused, expired: the one before
                problems.append(f"{entry['name']}: {exc}")
        try:
            names = self.names()
        except Exception as exc:
            problems.append(f"listing {self.url}: {exc}")
            names = []
        for name in reversed(names):
            if name in tried:
                continue
            if name.endswith(".dcp"):
                problems.append(f"{name}: not committed in {POINTER}, never loaded")
                continue
            try:
                state, info = self._load_plain(name, None)
            except Exception as exc:
                problems.append(f"{name}: {exc}")
                continue
            problems.append(f"{name}: not recorded in {POINTER}, loaded unverified")
            return self._chosen(state, info, problems)
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise CheckpointError(f"no readable checkpoint in {self.url}{detail}")

    def _chosen(self, state: dict[str, Any], info: CheckpointInfo, problems: list[str]
                ) -> tuple[dict[str, Any], CheckpointInfo]:
        if problems:
            warnings.warn(
                f"skipped damaged checkpoint(s) in {self.url}: {'; '.join(problems)}; "
                f"using {info.name}", RuntimeWarning, stacklevel=3,
            )
        return state, info

    def _load_committed(self, entry: dict[str, Any]) -> tuple[dict[str, Any], CheckpointInfo]:
        name = entry["name"]
        files = check_manifest(entry.get("files"), name)
        if name.endswith(".pt"):
            return self._load_plain(name, files[name])
        from scalekit.training import sharded

        state, (nbytes, sha) = sharded.load_meta(self, name, files)
        epoch, step = _position(name)
        return state, CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                                     nbytes=nbytes, sha256=sha)

    def _load_plain(self, name: str, expected: dict[str, Any] | None
                    ) -> tuple[dict[str, Any], CheckpointInfo]:
        import torch

        data = self.fs.cat_file(self._path(name))  # a fresh read, no cached listing
        sha = verify_bytes(data, expected, name)
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        epoch, step = _position(name)
        return state, CheckpointInfo(url=self._url(name), name=name, epoch=epoch, step=step,
                                     nbytes=len(data), sha256=sha)

    # -- paths ---------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def _url(self, name: str) -> str:
        return posixpath.join(self.url.rstrip("/"), name)


def _position(name: str) -> tuple[int, int]:
    """(epoch, step) of a checkpoint name."""
    match = _NAME.match(name)
    if match is None:
        raise CheckpointError(f"not a checkpoint name: {name!r}")
    return int(match[1]), int(match[2])
