"""BatchReader: a whole batch per read, equal to what skorch's per-sample path yields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.dataset import Dataset, ValidSplit
from skorch.utils import multi_indexing
from torch import nn
from torch.utils.data import Subset, TensorDataset, default_collate

from scalekit.training.data import BatchReader

N = 20
RNG = np.random.default_rng(0)
X_NP = RNG.normal(size=(N, 3)).astype(np.float32)
Y_NP = np.arange(N, dtype=np.int64) % 2
IDX = np.array([3, 0, 17, 3, 9])


def per_sample(dataset, idx):
    """The reference: what a DataLoader would produce, one sample at a time."""
    return default_collate([dataset[int(i)] for i in idx])


def assert_same(actual, expected):
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert actual.keys() == expected.keys()
        for k in expected:
            assert_same(actual[k], expected[k])
        return
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
        return
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, X):
        return torch.softmax(self.lin(X), dim=-1)


@pytest.mark.parametrize(
    "X",
    [
        pytest.param(X_NP, id="numpy"),
        pytest.param(torch.from_numpy(X_NP), id="tensor"),
        pytest.param({"a": X_NP, "b": X_NP[:, :1] * 2}, id="dict"),
        pytest.param([X_NP, X_NP * 3], id="list"),
    ],
)
@pytest.mark.parametrize("y", [pytest.param(Y_NP, id="y-numpy"),
                               pytest.param(torch.from_numpy(Y_NP), id="y-tensor")])
def test_skorch_dataset_is_read_a_batch_at_a_time(X, y):
    ds = Dataset(X, y)
    reader = BatchReader(ds)
    assert reader._fast  # fancy indexing, not per-sample collation
    assert len(reader) == N
    Xb, yb = reader.read(IDX)
    assert_same(Xb, per_sample(ds, IDX)[0])
    assert_same(yb, Y_NP[IDX])
    assert len(yb) == len(IDX)
    # the same containers and dtypes as skorch's multi_indexing (one call instead of a
    # list of indices that scikit-learn inspects one by one)
    assert_same_kind(Xb, multi_indexing(X, IDX))
    assert_same_kind(yb, multi_indexing(y, IDX))


def assert_same_kind(actual, expected):
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        for k in expected:
            assert_same_kind(actual[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        for a, e in zip(actual, expected, strict=True):
            assert_same_kind(a, e)
    else:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape


def test_skorch_dataset_without_y_gives_one_placeholder_per_sample():
    reader = BatchReader(Dataset(X_NP, None))
    Xb, yb = reader.read(IDX)
    assert_same(Xb, X_NP[IDX])
    assert yb.shape == (len(IDX),)


def test_subsets_as_validsplit_returns_them_map_to_the_base_dataset():
    net = NeuralNetClassifier(Tiny, train_split=ValidSplit(4, stratified=True))
    train, valid = net.get_split_datasets(X_NP, Y_NP)
    assert isinstance(train, Subset) and isinstance(valid, Subset)
    for part in (train, valid):
        reader = BatchReader(part)
        assert reader._fast
        assert len(reader) == len(part)
        idx = np.arange(len(part))[::-1]
        Xb, yb = reader.read(idx)
        expected_X, expected_y = per_sample(part, idx)
        assert_same(Xb, expected_X)
        assert_same(yb, expected_y)
    # together they are the whole dataset, each sample once
    seen = np.concatenate([np.asarray(train.indices), np.asarray(valid.indices)])
    assert sorted(seen.tolist()) == list(range(N))


def test_nested_subsets_compose_their_indices():
    ds = Dataset(X_NP, Y_NP)
    outer = Subset(ds, [19, 2, 5, 7, 11, 13])
    inner = Subset(outer, [5, 0, 3])  # -> base 13, 19, 7
    reader = BatchReader(inner)
    Xb, yb = reader.read(np.array([0, 1, 2, 1]))
    assert_same(Xb, X_NP[[13, 19, 7, 19]])
    assert_same(yb, Y_NP[[13, 19, 7, 19]])


def test_generic_torch_dataset_goes_through_default_collate():
    ds = TensorDataset(torch.from_numpy(X_NP), torch.from_numpy(Y_NP))
    reader = BatchReader(ds)
    assert not reader._fast
    Xb, yb = reader.read(IDX)
    assert isinstance(Xb, torch.Tensor) and Xb.shape == (len(IDX), 3)
    assert_same(Xb, X_NP[IDX])
    assert_same(yb, Y_NP[IDX])


def test_subset_of_a_generic_torch_dataset():
    ds = TensorDataset(torch.from_numpy(X_NP), torch.from_numpy(Y_NP))
    part = Subset(ds, [4, 8, 15, 16])
    Xb, yb = BatchReader(part).read(np.array([3, 0]))
    assert_same(Xb, X_NP[[16, 4]])
    assert_same(yb, Y_NP[[16, 4]])


class MapDataset(torch.utils.data.Dataset):
    """A user dataset yielding dicts (no X/y attributes)."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": torch.from_numpy(X_NP[i]), "id": i}, int(Y_NP[i])


def test_generic_dataset_of_dict_samples():
    Xb, yb = BatchReader(MapDataset()).read(IDX)
    assert_same(Xb["x"], X_NP[IDX])
    assert Xb["id"].tolist() == IDX.tolist()
    assert yb.tolist() == Y_NP[IDX].tolist()


class Doubling(Dataset):
    """A skorch Dataset subclass that changes samples in ``transform``."""

    def transform(self, X, y):
        return X * 2, y


def test_skorch_dataset_subclass_keeps_its_own_getitem():
    reader = BatchReader(Doubling(X_NP, Y_NP))
    assert not reader._fast  # a subclass may override __getitem__/transform
    Xb, _ = reader.read(IDX)
    assert_same(Xb, X_NP[IDX] * 2)


def test_pandas_dataframe_is_read_like_skorch_reads_it():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": X_NP[:, 0], "b": X_NP[:, 1]})
    ds = Dataset(df, Y_NP)
    Xb, _ = BatchReader(ds).read(IDX)
    expected, _ = per_sample(ds, IDX)  # skorch turns a DataFrame into a dict of columns
    assert_same(Xb, expected)
