"""Checkpoints on a real S3 API: moto's server on 127.0.0.1, reached through s3fs.

The first tests drive a CheckpointStore directly (seconds); the ``slow`` ones run fits
on a LocalCluster whose workers reach the same server: through ``storage_options`` of a
``CheckpointStore`` (the recovery test) or through the environment variables botocore
reads, set before the workers start (the strategy tests, which pass a plain ``s3://``
URL). Each test uses a fresh prefix of one bucket.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import warnings
from pathlib import Path

import dask.config
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn
from training_models import DigitsMLP, HoldWhileFileExists, digits

import scalekit as sk
from scalekit.events import CheckpointSaved, RankStatus, Recovered, Resized, RunStarted
from scalekit.training.checkpoint import POINTER, CheckpointStore
from scalekit.training.rounds import warm_worker
from scalekit.training.strategies import Hybrid

X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = digits()
BATCHES = -(-len(X_TRAIN) // 64)  # steps per epoch
FIT_TIMEOUT = 240  # seconds a fit may take on a busy two-core machine


def state_for(epoch: int) -> dict:
    return {"format": 1, "epoch": epoch, "step": 0, "w": torch.full((8,), float(epoch))}


def objects(store: CheckpointStore) -> list[str]:
    """Every object under the store's prefix, relative to it (a fresh listing)."""
    store.fs.invalidate_cache()
    prefix = store.root.rstrip("/") + "/"
    return sorted(p[len(prefix):] for p in store.fs.find(store.root))


def recorded(store: CheckpointStore) -> list[str]:
    """The objects latest.json records, and latest.json itself."""
    pointer = store.latest_info()
    return sorted([POINTER] + [p for e in pointer["checkpoints"] for p in e["files"]])


# -- the store on S3 ------------------------------------------------------------------------


def test_plain_checkpoints_are_saved_pruned_and_loaded_through_s3fs(s3):
    store = CheckpointStore(s3.url(), keep=2, storage_options=s3.storage_options)
    assert store.object_store
    for epoch in (1, 2, 3, 4):
        store.save(state_for(epoch), epoch=epoch)
    assert store.names() == ["ckpt-000003-00000000.pt", "ckpt-000004-00000000.pt"]
    assert objects(store) == recorded(store)  # pruned, and no temporary object anywhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, info = store.load_latest()
    assert info.epoch == 4 and torch.equal(state["w"], torch.full((8,), 4.0))


def test_a_notebook_with_a_cached_listing_loads_what_rank_0_saved_since(s3):
    """Issue 13 item 1, as it happened: the notebook's s3fs instance listed the folder at
    the first recovery; rank 0 (another s3fs instance) then saved and pruned, and the
    second recovery raised s3fs's FileExpired for latest.json and ended the fit."""
    url = s3.url()
    rank0 = CheckpointStore(url, keep=2,
                            storage_options={**s3.storage_options, "skip_instance_cache": True})
    notebook = CheckpointStore(url, keep=2, storage_options=s3.storage_options)
    for epoch in (1, 2):
        rank0.save(state_for(epoch), epoch=epoch)
    assert notebook.load_latest()[1].epoch == 2  # the first recovery: listings cached
    for epoch in (3, 4, 5):
        rank0.save(state_for(epoch), epoch=epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, info = notebook.load_latest()  # the second recovery
    assert info.epoch == 5 and state["epoch"] == 5


def small_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_sharded_checkpoints_are_written_without_renames_and_load_verified(s3, tmp_path):
    """Issue 13 items 2 and 4 on S3: main's ``fs.mv`` of the shard folder failed with
    NoSuchKey (there is no folder object to copy); a planted .metadata never runs."""
    store = CheckpointStore(s3.url(), keep=2, storage_options=s3.storage_options)
    model, optimizer = small_model()
    for epoch in (1, 2, 3):
        info = store.save_sharded(model, optimizer, {"format": 1, "epoch": epoch, "step": 0},
                                  epoch=epoch, step=0, rank=0)
        assert info.name == f"ckpt-{epoch:06d}-00000000.dcp"
    assert store.names() == ["ckpt-000002-00000000.dcp", "ckpt-000003-00000000.dcp"]
    assert objects(store) == recorded(store)
    state, info = store.load_latest()
    target, target_optimizer = small_model(seed=1)
    store.load_sharded(target, target_optimizer, state["sharded"])
    for a, b in zip(target.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)

    marker = tmp_path / "payload-ran"

    class SystemCall:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    store.fs.pipe_file(store._path("ckpt-000003-00000000.dcp/.metadata"),
                       pickle.dumps(SystemCall()))
    with pytest.warns(RuntimeWarning, match="does not match the digest"):
        assert store.load_latest()[1].name == "ckpt-000002-00000000.dcp"
    assert not marker.exists()


# -- fits on a cluster whose workers reach the same server -----------------------------------


def make_net(max_epochs, **kwargs):
    torch.manual_seed(0)
    return NeuralNetClassifier(
        DigitsMLP, optimizer=torch.optim.SGD, lr=0.1, optimizer__momentum=0.9, batch_size=64,
        max_epochs=max_epochs, iterator_train__shuffle=True, train_split=None, verbose=0,
        **kwargs)


def wait_until(condition, what, run=None, timeout=FIT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if run is not None and run.done:
            run.wait()  # raises the fit's error, if any
            raise AssertionError(f"the fit ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


def of(run, kind):
    return [e for e in list(run.events) if isinstance(e, kind)]


def ranks(run):
    """The newest generation's ranks -> worker addresses."""
    statuses = [e for e in of(run, RankStatus) if e.state in ("rendezvous", "training")]
    newest = max((e.generation for e in statuses), default=None)
    return {e.rank: e.worker for e in statuses if e.generation == newest}


def saved_epochs(run):
    return max((e.epoch for e in of(run, CheckpointSaved)), default=0)


@pytest.fixture
def own_cluster(tmp_path):
    """Two workers of its own: killed workers are restarted by their nannies."""
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "default")}):
        session = sk.cluster(workers=2)
        try:
            session.wait_for_workers(2, timeout=120)
            yield session
        finally:
            session.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_recoveries_in_one_fit_with_checkpoints_on_s3(s3, own_cluster, tmp_path):
    """Kill rank 1 mid-epoch, let the replacement join, and kill rank 1 again after the
    checkpoints the first recovery saw were pruned (keep=2)."""
    session = own_cluster
    store = CheckpointStore(s3.url(), keep=2, storage_options=s3.storage_options)
    mid, end = tmp_path / "hold-mid", tmp_path / "hold-end"
    net = make_net(10, callbacks=[("mid", HoldWhileFileExists(mid, at_batch=BATCHES // 3)),
                                  ("end", HoldWhileFileExists(end))])
    run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=session, checkpoint=store, wait=False,
                 show=False)

    def kill_rank_1(n, after_epochs):
        held = Path(f"{mid}.held")
        if not mid.exists():
            wait_until(lambda: saved_epochs(run) >= after_epochs, f"{after_epochs} epochs",
                       run)
            held.unlink(missing_ok=True)
            mid.touch()
        wait_until(lambda: held.exists() and len(ranks(run)) == 2 and saved_epochs(run)
                   >= after_epochs, "a hold on 2 ranks", run)
        address = ranks(run)[1]
        os.kill(session.client.run(os.getpid, workers=[address])[address], signal.SIGKILL)
        mid.unlink()
        wait_until(lambda: len(of(run, Recovered)) >= n, f"recovery #{n}", run)

    try:
        kill_rank_1(1, after_epochs=2)
        # hold the survivor at an epoch end until the replacement worker is up and warm
        end.touch()
        wait_until(lambda: Path(f"{end}.held").exists(), "an epoch end", run)
        session.wait_for_workers(2, timeout=180)
        for address in set(session.client.nthreads()) - set(ranks(run).values()):
            session.client.submit(warm_worker, workers=[address], allow_other_workers=False,
                                  pure=False).result(timeout=180)
        end.unlink()
        wait_until(lambda: of(run, Resized), "the replacement to join", run)
        # arm the next mid-epoch hold two epochs ahead as soon as the world grew: two
        # more saves, so what the first recovery listed is pruned by then (waiting for
        # those saves before arming, a short epoch on a busy machine ran past the hold
        # and the fit ended first)
        second = of(run, Resized)[-1].epoch + 2
        Path(f"{mid}.held").unlink(missing_ok=True)
        mid.write_text(str(second))
        kill_rank_1(2, after_epochs=second)
        net = run.wait(timeout=FIT_TIMEOUT)
    finally:
        mid.unlink(missing_ok=True)
        end.unlink(missing_ok=True)
        if not run.done:
            run.wait(timeout=FIT_TIMEOUT)
    assert run.status == "finished" and len(of(run, Recovered)) == 2
    assert net.history[:, "epoch"] == list(range(1, 11))
    assert net.score(X_TEST, Y_TEST) > 0.9
    assert store.names() == ["ckpt-000009-00000000.pt", "ckpt-000010-00000000.pt"]
    assert objects(store) == recorded(store)


@pytest.fixture(scope="module")
def env_cluster(s3, tmp_path_factory):
    """Two workers started with the server's endpoint and credentials in their
    environment (as a user would export AWS_* before starting a cluster)."""
    saved = {name: os.environ.get(name) for name in s3.env}
    os.environ.update(s3.env)
    try:
        root = tmp_path_factory.mktemp("default-ckpt")
        with dask.config.set({"scalekit.checkpoint.root": str(root)}):
            session = sk.cluster(workers=2)
            try:
                session.wait_for_workers(2, timeout=120)
                yield session
            finally:
                session.close()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", Hybrid(shard_size=1), "local_sgd"],
                         ids=["ddp", "fsdp", "hybrid", "local_sgd"])
def test_every_strategy_checkpoints_prunes_and_resumes_on_s3(s3, env_cluster, strategy):
    url = s3.url()  # a plain URL: the endpoint and credentials come from the environment
    suffix = ".pt" if strategy in ("ddp", "local_sgd") else ".dcp"
    with dask.config.set({"scalekit.checkpoint.keep": 2}):
        sk.fit(make_net(3), X_TRAIN, Y_TRAIN, cluster=env_cluster, checkpoint=url,
               strategy=strategy, show=False)
        store = CheckpointStore(url)
        assert store.names() == [f"ckpt-00000{e}-00000000{suffix}" for e in (2, 3)]
        assert objects(store) == recorded(store)

        net = make_net(4)  # a kernel restart: a new net, 4 epochs in all
        run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=env_cluster, checkpoint=url,
                     resume=True, strategy=strategy, show=False)
    assert of(run, RunStarted)[0].start_epoch == 3
    assert net.history[:, "epoch"] == [1, 2, 3, 4]
    assert net.score(X_TEST, Y_TEST) > 0.85
    assert store.names() == [f"ckpt-00000{e}-00000000{suffix}" for e in (3, 4)]
    assert objects(store) == recorded(store)
