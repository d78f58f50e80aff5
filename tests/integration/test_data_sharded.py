"""Sharded data on a real LocalCluster: Dask arrays and frames, a parquet folder, the
memory a rank holds, checks that refuse before anything starts, a killed worker
mid-epoch, and resuming inside an epoch (issue 17)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dask.config
import numpy as np
import pytest
import torch
from data_files import FEATURES, wide_data, write_parquet
from skorch import NeuralNetClassifier
from skorch.dataset import ValidSplit
from torch import nn
from training_models import DigitsMLP, HoldWhileFileExists, WideMLP, digits, digits_x4

import scalekit as sk
from scalekit.data import DataError
from scalekit.events import (
    CheckpointSaved,
    Notice,
    RankStatus,
    Recovered,
    RunStarted,
    ShardProgress,
    TrainingReport,
)

pytestmark = pytest.mark.timeout(300)
X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()
FIT_TIMEOUT = 240


def make_net(module=DigitsMLP, max_epochs=6, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("train_split", None)
    kwargs.setdefault("lr", 0.1)
    return NeuralNetClassifier(module, optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                               batch_size=64, max_epochs=max_epochs,
                               iterator_train__shuffle=True, verbose=0, **kwargs)


def of(run, kind):
    return [e for e in list(run.events) if isinstance(e, kind)]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt-root")
    with dask.config.set({"scalekit.checkpoint.root": str(root)}):
        s = sk.cluster(workers=2, memory_limit="2GiB")
        try:
            s.wait_for_workers(2, timeout=120)
            yield s
        finally:
            s.close()


@pytest.fixture
def own_two(tmp_path):
    """Two workers of this test's own: a test that kills one leaves its nanny's new
    worker process behind, which the module's cluster must not inherit."""
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "ckpt-root")}):
        s = sk.cluster(workers=2, memory_limit="2GiB")
        try:
            s.wait_for_workers(2, timeout=120)
            yield s
        finally:
            s.close()


@pytest.fixture
def two(session):
    session.scale(2)
    session.wait_for_workers(2, timeout=120)
    return session


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("digits") / "train", X_TRAIN, Y_TRAIN)


def test_a_dask_array_trains_where_its_chunks_live(two):
    import dask.array as da

    X = da.from_array(X_TRAIN, chunks=(150, 64))
    y = da.from_array(Y_TRAIN, chunks=150)
    net = make_net()
    run = sk.fit(net, X, y, cluster=two, show=False, checkpoint=False)
    started = of(run, RunStarted)[0]
    assert started.sampling == "sharded" and started.n_shards == len(X.chunks[0])
    assert net.score(X_TEST, Y_TEST) > 0.85
    # the partitions were released with the fit: nothing of it stays on the workers
    wait_until(lambda: not [k for k in two.client.who_has() if "_pack" in str(k)],
               "the partitions to be released", timeout=30)


def test_a_dask_dataframe_with_column_names_trains(two):
    import dask.dataframe as dd
    import pandas as pd

    frame = pd.DataFrame(X_TRAIN, columns=FEATURES).assign(label=Y_TRAIN)
    ddf = dd.from_pandas(frame, npartitions=6)
    net = make_net()
    run = sk.fit(net, sk.data.from_dask(ddf, target="label"), cluster=two, show=False,
                 checkpoint=False)
    assert of(run, RunStarted)[0].n_samples == len(X_TRAIN)
    assert net.score(X_TEST, Y_TEST) > 0.85
    # a frame and a series, as sk.fit(net, X, y) gets them
    net = make_net(max_epochs=2)
    sk.fit(net, ddf[FEATURES], ddf["label"], cluster=two, show=False, checkpoint=False)
    assert len(net.history) == 2


def test_a_parquet_folder_trains_with_sharded_validation(two, digits_parquet):
    source = sk.data.parquet(digits_parquet, features=FEATURES, target="label")
    net = make_net(train_split=ValidSplit(6))  # two of the twelve row groups held out
    run = sk.fit(net, source, cluster=two, show=False, checkpoint=False)
    assert net.score(X_TEST, Y_TEST) > 0.85
    rows = net.history[-1]
    assert rows["valid_acc"] > 0.85 and "valid_loss" in rows
    progress = of(run, ShardProgress)
    assert {p.rank for p in progress} == {0, 1}
    last = {p.rank: p for p in progress if p.epoch == 5}
    assert all(p.shards_done == p.shards_total > 0 for p in last.values())
    # ten training shards over two ranks: each read about half of them
    assert all(3 <= p.shards_total <= 7 for p in last.values())
    held_out = len(X_TRAIN) - sum(p.rows_total for p in last.values())
    assert 0.1 * len(X_TRAIN) < held_out < 0.25 * len(X_TRAIN)


def test_fewer_shards_than_ranks_share_them_and_say_so(two, tmp_path):
    folder = write_parquet(tmp_path / "one", X_TRAIN, Y_TRAIN, files=1, row_groups=1)
    source = sk.data.parquet(folder, features=FEATURES, target="label")
    assert len(source.shards) == 1
    net = make_net(max_epochs=3)
    run = sk.fit(net, source, cluster=two, show=False, checkpoint=False)
    notices = [e.message for e in of(run, Notice)]
    assert any("1 training shard(s) for 2 ranks: ranks share shards" in m for m in notices)
    last = {p.rank: p for p in of(run, ShardProgress) if p.epoch == 2}
    assert sorted(last) == [0, 1] and all(p.shards_total == 1 for p in last.values())
    assert sum(p.rows_total for p in last.values()) == len(X_TRAIN)  # each its half
    assert net.score(X_TEST, Y_TEST) > 0.8


def test_a_pipeline_is_fitted_partition_wise_and_returned_fitted(two, digits_parquet):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    source = sk.data.parquet(digits_parquet, features=FEATURES, target="label")
    pipe = Pipeline([("scale", StandardScaler()), ("net", make_net(max_epochs=5, lr=0.05))])
    run = sk.fit(pipe, source, cluster=two, show=False, checkpoint=False)
    fitted = run.wait()
    assert fitted is pipe
    scaler = pipe.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, X_TRAIN.mean(axis=0), atol=1e-4)
    assert scaler.n_samples_seen_ == len(X_TRAIN)
    assert pipe.score(X_TEST, Y_TEST) > 0.85


def test_a_pipeline_on_arrays_fits_its_transformers_in_the_notebook(two):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("scale", StandardScaler()), ("net", make_net(max_epochs=3, lr=0.05))])
    run = sk.fit(pipe, X_TRAIN, Y_TRAIN, cluster=two, show=False, checkpoint=False)
    assert of(run, RunStarted)[0].sampling == "exact"
    assert run.estimator is pipe and pipe.predict(X_TEST).shape == Y_TEST.shape


def test_a_rank_holds_its_read_buffer_not_the_data(two, tmp_path):
    """The same 120 MB trained on two workers: sharded from parquet, then exact (the
    whole array scattered to every worker). A sharded rank's peak stays far below."""
    X, y = wide_data(240_000, 125)  # 120 MB of float32
    folder = write_parquet(tmp_path / "wide", X, y, files=12, row_groups=2)
    source = sk.data.parquet(folder, features=[f"f{j}" for j in range(125)], target="label")
    data = source.nbytes

    def fit(data_in, *args):
        net = NeuralNetClassifier(nn.Linear, module__in_features=125, module__out_features=4,
                                  criterion=nn.CrossEntropyLoss, batch_size=1024,
                                  max_epochs=1, train_split=None, verbose=0,
                                  iterator_train__shuffle=True)
        run = sk.fit(net, data_in, *args, cluster=two, show=False, checkpoint=False)
        return of(run, TrainingReport)[-1].peak_rss

    sharded = fit(source)
    exact = fit(X, y)
    del X, y
    shard = max(s.nbytes for s in source.shards)
    print(f"\n[data] peak RSS per rank, sharded {[p >> 20 for p in sharded]} MiB, "
          f"exact {[p >> 20 for p in exact]} MiB; data {data >> 20} MiB, shard {shard >> 20}")
    for s, e in zip(sharded, exact, strict=True):
        assert s < e - 0.6 * data  # the exact path holds the whole set, this not
        assert s < 2 * 2**30  # the worker's memory limit


def test_a_share_too_big_for_the_workers_is_refused_before_anything_runs(two):
    import dask.array as da

    X = da.zeros((3_000_000, 512), chunks=(100_000, 512))  # 5.7 GiB over 2 x 2 GiB
    y = da.zeros(3_000_000, chunks=100_000, dtype=np.int64)
    before = dict(two.client.nthreads())
    with pytest.raises(DataError, match=r"memory limit of 2,048 MiB.*share of the data"):
        sk.fit(make_net(), X, y, cluster=two, show=False, checkpoint=False)
    assert dict(two.client.nthreads()) == before and not two.client.who_has()


def test_a_source_the_workers_cannot_read_is_refused_before_anything_runs(two, tmp_path):
    folder = write_parquet(tmp_path / "gone", X_TRAIN[:200], Y_TRAIN[:200], files=2)
    source = sk.data.parquet(folder, features=FEATURES, target="label")
    for path in Path(folder).iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"2 of 2 worker\(s\) cannot read.*Nothing was"):
        sk.fit(make_net(), source, cluster=two, show=False, checkpoint=False)


# -- elastic -------------------------------------------------------------------------------

X4, X4_TEST, Y4, Y4_TEST = digits_x4()
BATCHES = len(X4) // 64  # sharded: full steps only


def elastic_net(max_epochs, **kwargs):
    torch.manual_seed(0)
    return NeuralNetClassifier(WideMLP, criterion=nn.CrossEntropyLoss,
                               optimizer=torch.optim.SGD, lr=0.05, optimizer__momentum=0.9,
                               batch_size=64, max_epochs=max_epochs, train_split=None,
                               iterator_train__shuffle=True, verbose=0, **kwargs)


def wait_until(condition, what, run=None, timeout=FIT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if run is not None and run.done:
            run.wait()
            raise AssertionError(f"the fit ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


@pytest.fixture(scope="module")
def x4_parquet(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("x4") / "train", X4, Y4, files=8)


@pytest.mark.slow
def test_a_killed_worker_mid_epoch_recovers_with_its_shards_dealt_again(own_two, x4_parquet,
                                                                       tmp_path):
    two = own_two
    source = sk.data.parquet(x4_parquet, features=FEATURES, target="label")
    hold = tmp_path / "hold"
    net = elastic_net(4, callbacks=[("hold", HoldWhileFileExists(hold, at_batch=BATCHES // 2))])
    hold.write_text("1")  # hold in epoch 2, half-way
    with dask.config.set({"scalekit.checkpoint.every-seconds": 0.01}):
        run = sk.fit(net, source, cluster=two, checkpoint=str(tmp_path / "ckpt"), wait=False,
                     show=False)
        try:
            wait_until(lambda: Path(f"{hold}.held").exists(), "the hold", run)
            wait_until(lambda: any(e.step > 0 and e.epoch == 1
                                   for e in of(run, CheckpointSaved)), "a mid-epoch save", run)
            ranks = {e.rank: e.worker for e in of(run, RankStatus) if e.state == "training"}
            address = ranks[1]
            pid = two.client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
            hold.unlink()
            net = run.wait(timeout=FIT_TIMEOUT)
        finally:
            hold.unlink(missing_ok=True)
    recovered = of(run, Recovered)
    assert len(recovered) == 1 and recovered[0].epoch == 1 and recovered[0].step > 0
    assert recovered[0].lost_steps < BATCHES  # less than one interval... of an epoch
    assert net.history[:, "epoch"] == [1, 2, 3, 4]
    # the interrupted epoch went on from its checkpoint: its batches add up to an epoch
    assert sum(1 for _ in net.history[1]["batches"]) >= BATCHES - 1
    # after the recovery the survivor read the rest of the epoch's rows alone
    after = [p for p in of(run, ShardProgress) if p.epoch == 1 and p.generation > 0]
    assert after and {p.rank for p in after} <= {0, 1}
    assert net.score(X4_TEST, Y4_TEST) > 0.9


@pytest.mark.slow
def test_resume_continues_the_same_epochs_deal(two, x4_parquet, tmp_path):
    source = sk.data.parquet(x4_parquet, features=FEATURES, target="label")
    url = str(tmp_path / "ckpt")
    stop_at = BATCHES // 3

    net = elastic_net(3, callbacks=[("stop", StopAt(epoch=2, batch=stop_at))])
    with dask.config.set({"scalekit.checkpoint.every-seconds": 0.01}):
        with pytest.raises(Exception, match="stopped on purpose"):
            sk.fit(net, source, cluster=two, checkpoint=url, show=False)
        from scalekit.training.checkpoint import CheckpointStore

        state, info = CheckpointStore(url).load_latest()
        assert info.epoch == 1 and info.step > 0 and state["data"]["epoch"] == 1
        net = elastic_net(3)  # a kernel restart
        run = sk.fit(net, source, cluster=two, checkpoint=url, resume=True, show=False)
    assert of(run, RunStarted)[0].start_epoch == 1
    assert net.history[:, "epoch"] == [1, 2, 3]
    assert len(net.history[1]["batches"]) == BATCHES
    # the resumed rank streams started where the checkpoint's deal stood
    first = [p for p in of(run, ShardProgress) if p.epoch == 1]
    assert first and min(p.rows_done for p in first) >= info.step * 32
    assert net.score(X4_TEST, Y4_TEST) > 0.85


class StopAt(HoldWhileFileExists):
    """Raises after training step ``batch`` of epoch ``epoch`` (1-based) on every rank."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, net, training=False, **kwargs):
        if training and len(net.history) == self.epoch \
                and len(net.history[-1]["batches"]) == self.batch:
            time.sleep(0.1)  # let the every-seconds save land
            raise RuntimeError("stopped on purpose")

    def on_epoch_end(self, net, **kwargs):
        pass
