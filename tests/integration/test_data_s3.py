"""A parquet dataset on a real S3 API (moto's server on 127.0.0.1, through s3fs): each
rank reads its row groups straight from the bucket, with the credentials handed over
as storage_options (issue 17)."""

from __future__ import annotations

import pytest
import torch
from data_files import FEATURES, write_parquet
from skorch import NeuralNetClassifier
from training_models import DigitsMLP, digits

import scalekit as sk
from scalekit.data import DataError
from scalekit.events import RunStarted, ShardProgress

pytestmark = pytest.mark.timeout(300)
X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()


@pytest.fixture
def s3_parquet(s3):
    import fsspec

    url = s3.url("train")
    fs, root = fsspec.core.url_to_fs(url, **s3.storage_options)
    write_parquet(root, X_TRAIN, Y_TRAIN, files=4, row_groups=2, fs=fs)
    return url


def test_a_parquet_dataset_on_s3_trains_from_the_bucket(s3, s3_parquet, local_session):
    source = sk.data.parquet(s3_parquet, features=FEATURES, target="label",
                             storage_options=s3.storage_options)
    assert len(source.shards) == 8 and source.n_rows == len(X_TRAIN)
    torch.manual_seed(0)
    net = NeuralNetClassifier(DigitsMLP, optimizer=torch.optim.SGD, lr=0.1,
                              optimizer__momentum=0.9, batch_size=64, max_epochs=5,
                              iterator_train__shuffle=True, train_split=None, verbose=0)
    run = sk.fit(net, source, cluster=local_session, show=False, checkpoint=False)
    assert [e for e in run.events if isinstance(e, RunStarted)][0].sampling == "sharded"
    read = {e.rank: e.bytes_read for e in run.events if isinstance(e, ShardProgress)}
    assert set(read) == {0, 1} and all(read.values())
    assert net.score(X_TEST, Y_TEST) > 0.85


def test_a_missing_prefix_on_s3_is_refused(s3):
    with pytest.raises(DataError, match="does not exist"):
        sk.data.parquet(s3.url("nothing-here"), features=FEATURES, target="label",
                        storage_options=s3.storage_options)


def test_a_refused_key_says_where_credentials_go(s3, s3_parquet, monkeypatch):
    """moto checks no signatures; a store that refuses access answers 403, which is what
    the source is told here (through an endpoint that refuses every request)."""
    import fsspec

    fs = fsspec.filesystem("s3", **s3.storage_options, skip_instance_cache=True)

    def refuse(*args, **kwargs):
        raise PermissionError("AccessDenied: Access Denied (403)")

    monkeypatch.setattr(type(fs), "find", refuse)
    with pytest.raises(DataError, match="refused the credentials.*storage_options"):
        sk.data.parquet(s3_parquet, features=FEATURES, target="label",
                        storage_options={**s3.storage_options, "skip_instance_cache": True})
