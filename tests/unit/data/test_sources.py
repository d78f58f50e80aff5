"""Parquet and .npy/.npz sources: described from footers and headers, read shard by shard,
and clear errors for bad input, before any cluster work."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import scalekit as sk
from scalekit.data import DataError

from .datasets import FEATURES, make_arrays


def read_all(source):
    parts = [source.read(i) for i in range(len(source.shards))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_parquet_shards_are_row_groups_read_as_arrays(parquet_folder, arrays):
    source = sk.data.parquet(str(parquet_folder), features=FEATURES, target="label")
    assert len(source.shards) == 6 and source.n_rows == 120 and source.n_features == 4
    assert source.nbytes == 120 * (4 * 4 + 8)
    X, y = read_all(source)
    np.testing.assert_array_equal(X, arrays[0])
    np.testing.assert_array_equal(y, arrays[1])
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(source.labels(0), arrays[1][:20])
    Xp, yp = source.probe(2)
    assert Xp.shape == (2, 4) and list(yp) == [0, 1]


def test_a_source_pickles_as_its_description(parquet_folder):
    source = sk.data.parquet(str(parquet_folder), features=FEATURES, target="label")
    source.read(0)  # opens the filesystem
    copy = pickle.loads(pickle.dumps(source))
    assert copy._fs is None and copy.shards == source.shards
    np.testing.assert_array_equal(copy.read(3)[0], source.read(3)[0])


def test_a_fixed_size_list_column_is_the_feature_vector(tmp_path, arrays):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y = arrays
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 4)
    pq.write_table(pa.table({"x": vectors, "label": y}), tmp_path / "one.parquet")
    source = sk.data.parquet(str(tmp_path / "one.parquet"), features=["x"], target="label")
    assert source.n_features == 4
    np.testing.assert_array_equal(source.read(0)[0], X)


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sk.data.parquet(str(tmp_path / "nowhere"), features=FEATURES, target="label")


def test_a_folder_without_parquet_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no .parquet"):
        sk.data.parquet(str(tmp_path), features=FEATURES, target="label")


def test_a_missing_target_column_is_named(parquet_folder):
    with pytest.raises(DataError, match=r"no column\(s\) \['target'\].*columns are"):
        sk.data.parquet(str(parquet_folder), features=FEATURES, target="target")


def test_mismatched_schemas_are_refused(parquet_folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y = make_arrays(10)
    table = pa.table({**{c: X[:, j].astype(np.float64) for j, c in enumerate(FEATURES)},
                      "label": y})
    pq.write_table(table, parquet_folder / "part-9.parquet")
    with pytest.raises(DataError, match="mismatched schemas"):
        sk.data.parquet(str(parquet_folder), features=FEATURES, target="label")


def test_non_numeric_features_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": ["x", "y"], "label": [0, 1]}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match="not numeric"):
        sk.data.parquet(str(tmp_path), features=["a"], target="label")


def test_features_must_be_a_list():
    with pytest.raises(DataError, match="list of column names"):
        sk.data.parquet("/tmp", features="f0", target="label")


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="is not a parquet file"):
        sk.data.parquet(str(tmp_path), features=FEATURES, target="label")


def test_npz_files_are_shards(tmp_path, arrays):
    X, y = arrays
    for i, (xs, ys) in enumerate(zip(np.array_split(X, 4), np.array_split(y, 4), strict=True)):
        np.savez(tmp_path / f"s{i}.npz", X=xs, y=ys)
    source = sk.data.npy(str(tmp_path))
    assert len(source.shards) == 4 and source.n_rows == 120
    got = read_all(source)
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], y)
    np.testing.assert_array_equal(source.labels(1), y[30:60])


def test_npy_pairs_in_subfolders_are_shards(tmp_path, arrays):
    X, y = arrays
    (tmp_path / "X").mkdir()
    (tmp_path / "y").mkdir()
    for i, (xs, ys) in enumerate(zip(np.array_split(X, 3), np.array_split(y, 3), strict=True)):
        np.save(tmp_path / "X" / f"{i}.npy", xs.reshape(-1, 2, 2))  # rows of any shape
        np.save(tmp_path / "y" / f"{i}.npy", ys)
    source = sk.data.npy(str(tmp_path))
    assert source.n_features == 4
    np.testing.assert_array_equal(read_all(source)[0], X)


def test_npz_shapes_must_match(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.zeros((5, 4)), y=np.zeros(5))
    np.savez(tmp_path / "b.npz", X=np.zeros((5, 3)), y=np.zeros(5))
    with pytest.raises(DataError, match="mismatched shapes"):
        sk.data.npy(str(tmp_path))


def test_npz_rows_of_x_and_y_must_match(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.zeros((5, 4)), y=np.zeros(4))
    with pytest.raises(DataError, match="5 rows but y has 4"):
        sk.data.npy(str(tmp_path))


def test_npz_without_the_named_array_is_refused(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.zeros((5, 4)), y=np.zeros(5))
    with pytest.raises(DataError, match=r"no array\(s\) \['X'\]"):
        sk.data.npy(str(tmp_path))


def test_an_npy_without_its_partner_is_refused(tmp_path):
    (tmp_path / "X").mkdir()
    (tmp_path / "y").mkdir()
    np.save(tmp_path / "X" / "0.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match="has no partner"):
        sk.data.npy(str(tmp_path))


def test_refused_credentials_say_where_credentials_go(monkeypatch):
    from scalekit.data.sources import _access_error

    error = _access_error("s3://b/k", PermissionError("AccessDenied: nope"))
    assert "refused the credentials" in str(error) and "storage_options" in str(error)


def test_window_and_prefetch_are_checked(parquet_folder):
    with pytest.raises(DataError, match="window must be"):
        sk.data.parquet(str(parquet_folder), features=FEATURES, window=0)
    with pytest.raises(DataError, match="prefetch must be"):
        sk.data.parquet(str(parquet_folder), features=FEATURES, prefetch=-1)


def test_importing_scalekit_does_not_import_pyarrow_or_dask_dataframe():
    import subprocess
    import sys

    code = ("import sys, scalekit; scalekit.data; "
            "print(any(m.startswith(('pyarrow', 'dask.dataframe', 'pandas')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
