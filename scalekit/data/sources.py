"""Sharded data sources: what a rank trains on when the data is too big for one worker.

A source is a list of *shards* (a parquet row group, an ``.npy``/``.npz`` file, a Dask
partition) with their row counts and sizes, and a way to read one shard as numpy arrays
``(X, y)`` *on the worker that needs it*. Sources are described once, in the notebook
(listing files and reading footers or headers only: bad input fails here, before any
cluster work), and pickle as that description (URL, storage options, shard list): never
an open filesystem, never data.

Credentials work as for checkpoints: ``storage_options`` (fsspec's keywords, they travel
with the source) or the environment variables the client library reads (set them in the
notebook *and* the workers' environment).
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np

from scalekit.errors import UsageError

logger = logging.getLogger(__name__)


class DataError(UsageError):
    """A data source cannot be used as given (missing path, mismatched files, a missing
    column, unreadable credentials, a share too big for a worker)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of reading: ``ref`` says where it is (source specific)."""

    rows: int
    nbytes: int  # in memory, as the rank holds it (X float32 + y)
    ref: Any
    label: str = ""  # for messages: file name and row group


class ShardedSource:
    """Base class of the sharded sources.

    Attributes
    ----------
    shards : tuple of Shard
    n_features : int
        Columns of ``X``.
    window : int
        Shards per shuffle window (the shuffle buffer, in shards).
    prefetch : int
        Windows read ahead in the background (memory: ``1 + prefetch`` windows a rank).
    """

    kind = "sharded"
    shards: tuple[Shard, ...] = ()
    n_features: int = 0
    window: int = 1
    prefetch: int = 1
    dtype: str = "float32"

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(s.rows for s in self.shards)

    @property
    def n_rows(self) -> int:
        return sum(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def __len__(self) -> int:
        return self.n_rows

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Shard ``index`` as ``(X, y)`` (on the worker that trains on it)."""
        raise NotImplementedError

    def labels(self, index: int) -> np.ndarray | None:
        """The labels of shard ``index`` alone (a classifier's classes are found from
        them, on the workers)."""
        return self.read(index)[1]

    def probe(self, n: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
        """The first ``n`` rows, read cheaply (the notebook's dry run of the module)."""
        X, y = self.read(0)
        return X[:n], None if y is None else y[:n]

    def forget(self) -> None:
        """Drop what this process holds for reading (a worker's handles on Dask
        partitions), so nothing outlives the task that read."""

    def check_readable(self) -> None:
        """Raise :class:`DataError` unless this process can read the source (run on each
        worker before training: credentials must be there too)."""
        self.probe(1)

    def describe(self) -> str:
        mib = self.nbytes / 2**20
        return (f"{self.kind}: {self.n_rows:,} rows x {self.n_features} features in "
                f"{len(self.shards)} shards ({mib:,.1f} MiB in memory)")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# -- files on an fsspec URL ------------------------------------------------------------------


class FileSource(ShardedSource):
    """Shards in files under an fsspec URL (local folder, ``s3://``, ``gs://``, ...)."""

    suffixes: tuple[str, ...] = ()

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self.root = ""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # an open filesystem stays where it was opened
        return state

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            self._fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    def _files(self) -> list[str]:
        """The data files under the URL (a file URL is itself), sorted; clear errors for
        a missing path or credentials that do not work."""
        try:
            fs = self.fs
            if not fs.exists(self.root):
                raise DataError(f"{self.url} does not exist (nothing to read there)")
            if fs.isfile(self.root):
                found = [self.root]
            else:
                found = sorted(p for p in fs.find(self.root)
                               if p.endswith(self.suffixes)
                               and not posixpath.basename(p).startswith((".", "_")))
        except DataError:
            raise
        except Exception as exc:
            raise _access_error(self.url, exc) from exc
        if not found:
            raise DataError(f"{self.url} holds no {' or '.join(self.suffixes)} files")
        return found

    def _open(self, path: str, mode: str = "rb") -> Any:
        try:
            return self.fs.open(path, mode)
        except Exception as exc:
            raise _access_error(self.protocol_url(path), exc) from exc

    def protocol_url(self, path: str) -> str:
        protocol = self.fs.protocol
        protocol = protocol if isinstance(protocol, str) else protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"


def _access_error(url: str, exc: BaseException) -> DataError:
    """A clear error for a store that refused or failed us."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError) or any(
            word in text for word in ("AccessDenied", "InvalidAccessKeyId", "Forbidden",
                                      "SignatureDoesNotMatch", "NoCredentials",
                                      "credentials", "403")):
        return DataError(
            f"cannot read {url}: the store refused the credentials ({text}). Pass them "
            "as storage_options=... to the source, or set them in the environment of the "
            "notebook and of the workers (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE), as for checkpoints (docs/data.md)")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{url} does not exist ({text})")
    return DataError(f"cannot read {url}: {text}")


# -- parquet ---------------------------------------------------------------------------------


class ParquetSource(FileSource):
    """Parquet files; a shard is a row group.

    Parameters
    ----------
    url : str
        A parquet file or a folder of them (searched recursively; names starting with
        ``.`` or ``_`` are skipped).
    features : sequence of str
        Numeric columns that make ``X`` (in this order), or one column of fixed-size
        lists (each row a vector).
    target : str, optional
        The label column (``y``); ``None`` for data without labels.
    storage_options : dict, optional
        fsspec's keywords (credentials, endpoint), as for a ``CheckpointStore``.
    window : int
        Row groups per shuffle window (default 1).
    prefetch : int
        Windows read ahead in the background (default 1).
    dtype : str
        dtype of ``X`` (default float32).
    """

    kind = "parquet"
    suffixes = (".parquet", ".parq", ".pq")

    def __init__(self, url: str, *, features: Sequence[str], target: str | None = None,
                 storage_options: dict[str, Any] | None = None, window: int = 1,
                 prefetch: int = 1, dtype: str = "float32") -> None:
        super().__init__(url, storage_options=storage_options)
        if isinstance(features, str) or not features:
            raise DataError("features must be a non-empty list of column names, "
                            f"got {features!r}")
        self.features = [str(f) for f in features]
        self.target = target
        self.window, self.prefetch, self.dtype = _window(window, prefetch), prefetch, dtype
        self.files = self._files()
        self.shards, self.n_features = self._discover()

    def _discover(self) -> tuple[tuple[Shard, ...], int]:
        import pyarrow.parquet as pq

        shards: list[Shard] = []
        first_schema = None
        width = 0
        for path in self.files:
            with self._open(path) as f:
                try:
                    meta = pq.ParquetFile(f).metadata
                except Exception as exc:
                    raise DataError(f"{self.protocol_url(path)} is not a parquet file: "
                                    f"{type(exc).__name__}: {exc}") from exc
                schema = meta.schema.to_arrow_schema()
            if first_schema is None:
                first_schema = schema
                width = self._check_columns(schema, path)
            else:
                self._check_same(first_schema, schema, path)
            y_bytes = schema.field(self.target).type.bit_width // 8 if self.target else 0
            row_bytes = width * np.dtype(self.dtype).itemsize + max(y_bytes, 0)
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if rows:
                    shards.append(Shard(rows=rows, nbytes=rows * row_bytes, ref=(path, g),
                                        label=f"{posixpath.basename(path)}[{g}]"))
        if not shards:
            raise DataError(f"{self.url}: the parquet files hold no rows")
        return tuple(shards), width

    def _check_columns(self, schema: Any, path: str) -> int:
        import pyarrow as pa

        names = set(schema.names)
        missing = [c for c in self.features if c not in names]
        if self.target is not None and self.target not in names:
            missing.append(self.target)
        if missing:
            raise DataError(
                f"{self.protocol_url(path)} has no column(s) {missing}; its columns are "
                f"{schema.names}")
        types = [schema.field(c).type for c in self.features]
        if len(types) == 1 and pa.types.is_fixed_size_list(types[0]):
            return int(types[0].list_size)
        bad = [c for c, t in zip(self.features, types, strict=True)
               if not (pa.types.is_integer(t) or pa.types.is_floating(t)
                       or pa.types.is_boolean(t))]
        if bad:
            raise DataError(f"feature column(s) {bad} of {self.protocol_url(path)} are not "
                            "numeric (or one fixed-size list column)")
        if self.target is not None:
            t = schema.field(self.target).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise DataError(f"target column {self.target!r} is {t}, not a number")
        return len(self.features)

    def _check_same(self, first: Any, schema: Any, path: str) -> None:
        columns = [*self.features, *([self.target] if self.target else [])]
        for column in columns:
            if column not in schema.names:
                raise DataError(f"{self.protocol_url(path)} has no column {column!r}, unlike "
                                f"{self.protocol_url(self.files[0])}: mismatched schemas")
            if schema.field(column).type != first.field(column).type:
                raise DataError(
                    f"column {column!r} is {schema.field(column).type} in "
                    f"{self.protocol_url(path)} but {first.field(column).type} in "
                    f"{self.protocol_url(self.files[0])}: mismatched schemas")

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        import pyarrow.parquet as pq

        path, group = self.shards[index].ref
        columns = [*self.features, *([self.target] if self.target else [])]
        with self._open(path) as f:
            # one thread: the read-ahead thread decodes while the rank's own thread
            # trains; arrow's pool (a thread per core) would compete with every rank
            table = pq.ParquetFile(f).read_row_group(group, columns=columns,
                                                     use_threads=False)
        return self._arrays(table)

    def labels(self, index: int) -> np.ndarray | None:
        import pyarrow.parquet as pq

        if self.target is None:
            return None
        path, group = self.shards[index].ref
        with self._open(path) as f:
            table = pq.ParquetFile(f).read_row_group(group, columns=[self.target])
        return table.column(self.target).to_numpy()

    def probe(self, n: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path, _ = self.shards[0].ref
        columns = [*self.features, *([self.target] if self.target else [])]
        with self._open(path) as f:
            batch = next(pq.ParquetFile(f).iter_batches(batch_size=n, columns=columns))
        return self._arrays(pa.Table.from_batches([batch]))

    def _arrays(self, table: Any) -> tuple[np.ndarray, np.ndarray | None]:
        import pyarrow as pa

        first = table.column(self.features[0])
        if len(self.features) == 1 and pa.types.is_fixed_size_list(first.type):
            flat = first.combine_chunks()
            X = flat.values.to_numpy(zero_copy_only=False).reshape(len(flat), -1)
        else:
            X = np.empty((table.num_rows, len(self.features)), dtype=self.dtype)
            for j, name in enumerate(self.features):
                X[:, j] = table.column(name).to_numpy()
        X = np.ascontiguousarray(X, dtype=self.dtype)
        # a copy: arrow's buffers are read-only, torch wants to own what it wraps
        y = np.array(table.column(self.target).to_numpy()) if self.target else None
        return X, y


# -- .npy / .npz -----------------------------------------------------------------------------


class NpySource(FileSource):
    """A folder of ``.npz`` files (each with arrays ``x`` and ``y``), or of ``.npy``
    pairs in sub-folders ``<url>/<x>/`` and ``<url>/<y>/`` with the same file names.
    A shard is one file (or pair).

    Parameters
    ----------
    url : str
        The folder.
    x, y : str
        Array names in each ``.npz`` file, or sub-folder names of ``.npy`` files
        (``y=None``: no labels).
    storage_options, window, prefetch, dtype :
        As for :class:`ParquetSource`.
    """

    kind = "npy"
    suffixes = (".npz", ".npy")

    def __init__(self, url: str, *, x: str = "X", y: str | None = "y",
                 storage_options: dict[str, Any] | None = None, window: int = 1,
                 prefetch: int = 1, dtype: str = "float32") -> None:
        super().__init__(url, storage_options=storage_options)
        self.x, self.y = x, y
        self.window, self.prefetch, self.dtype = _window(window, prefetch), prefetch, dtype
        files = self._files()
        npz = [p for p in files if p.endswith(".npz")]
        self.shards, self.n_features = (self._discover_npz(npz) if npz
                                        else self._discover_npy(files))

    def _discover_npz(self, files: list[str]) -> tuple[tuple[Shard, ...], int]:
        import zipfile

        shards, shape0, y_item = [], None, 0
        for path in files:
            with self._open(path) as f, zipfile.ZipFile(f) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
                wanted = [self.x, *([self.y] if self.y else [])]
                missing = [a for a in wanted if a not in names]
                if missing:
                    raise DataError(f"{self.protocol_url(path)} has no array(s) {missing}; "
                                    f"it holds {sorted(names)}")
                with z.open(self.x + ".npy") as member:
                    shape, dtype = _npy_header(member)
                rows_y = shape[0]
                if self.y:
                    with z.open(self.y + ".npy") as member:
                        yshape, ydtype = _npy_header(member)
                    rows_y, y_item = yshape[0], ydtype.itemsize
            shape0 = self._check_shape(shape0, shape, rows_y, path)
            shards.append(self._shard(shape, y_item, path))
        return tuple(shards), int(np.prod(shape0[1:]))

    def _discover_npy(self, files: list[str]) -> tuple[tuple[Shard, ...], int]:
        prefix = self.root.rstrip("/") + "/"
        xs = [p for p in files if p.startswith(prefix + self.x + "/")]
        if not xs:
            raise DataError(f"{self.url} holds no .npz files and no {self.x}/*.npy files")
        shards, shape0 = [], None
        for path in xs:
            name = path[len(prefix + self.x + "/"):]
            with self._open(path) as f:
                shape, _ = _npy_header(f)
            rows_y, y_item, ypath = shape[0], 0, None
            if self.y:
                ypath = prefix + self.y + "/" + name
                if not self.fs.exists(ypath):
                    raise DataError(f"{self.protocol_url(path)} has no partner "
                                    f"{self.protocol_url(ypath)}")
                with self._open(ypath) as f:
                    yshape, ydtype = _npy_header(f)
                rows_y, y_item = yshape[0], ydtype.itemsize
            shape0 = self._check_shape(shape0, shape, rows_y, path)
            shards.append(self._shard(shape, y_item, (path, ypath)))
        return tuple(shards), int(np.prod(shape0[1:]))

    def _check_shape(self, first: tuple | None, shape: tuple, rows_y: int, path: str
                     ) -> tuple:
        if rows_y != shape[0]:
            raise DataError(f"{self.protocol_url(path)}: {self.x} has {shape[0]} rows but "
                            f"{self.y} has {rows_y}")
        if len(shape) < 2:
            shape = (shape[0], 1)
        if first is not None and tuple(first[1:]) != tuple(shape[1:]):
            raise DataError(f"{self.protocol_url(path)}: rows of shape {shape[1:]}, but "
                            f"{first[1:]} in the first file: mismatched shapes")
        return first or shape

    def _shard(self, shape: tuple, y_item: int, ref: Any) -> Shard:
        width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        path = ref[0] if isinstance(ref, tuple) else ref
        nbytes = shape[0] * (width * np.dtype(self.dtype).itemsize + y_item)
        return Shard(rows=int(shape[0]), nbytes=int(nbytes), ref=ref,
                     label=posixpath.basename(path))

    def labels(self, index: int) -> np.ndarray | None:
        ref = self.shards[index].ref
        if not self.y:
            return None
        if isinstance(ref, tuple):
            with self._open(ref[1]) as f:
                return np.load(f, allow_pickle=False)
        with self._open(ref) as f, np.load(f, allow_pickle=False) as z:
            return z[self.y]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        ref = self.shards[index].ref
        if isinstance(ref, tuple):  # .npy pair
            xpath, ypath = ref
            with self._open(xpath) as f:
                X = np.load(f, allow_pickle=False)
            y = None
            if ypath is not None:
                with self._open(ypath) as f:
                    y = np.load(f, allow_pickle=False)
        else:
            with self._open(ref) as f, np.load(f, allow_pickle=False) as z:
                X = z[self.x]
                y = z[self.y] if self.y else None
        X = np.ascontiguousarray(X.reshape(len(X), -1) if X.ndim != 2 else X, dtype=self.dtype)
        return X, y


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` stream, from its header alone."""
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    reader = (npformat.read_array_header_1_0 if version == (1, 0)
              else npformat.read_array_header_2_0)
    shape, _, dtype = reader(f)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _window(window: int, prefetch: int) -> int:
    if not isinstance(window, int) or window < 1:
        raise DataError(f"window must be an integer >= 1 (shards per shuffle window), "
                        f"got {window!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise DataError(f"prefetch must be an integer >= 0, got {prefetch!r}")
    return window
