"""Training-aware adaptive scaling on the emulated Kubernetes cluster, with a real fit.

Adaptive scaling on Kubernetes decides in the notebook, through the same pure
``adaptive_decision`` as locally, and scales the ``DaskWorkerGroup``: switched on during
a fit it grows the cluster to what the fit can use (the scheduler alone sees one busy
task per worker and asks for nothing), and a wanted shrink waits for the fit's next
epoch boundary instead of retiring a rank mid-epoch. Before, ``adapt`` handed the
cluster to the operator's ``DaskAutoscaler``, which did neither.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from kube_models import DigitsMLP, HoldWhileFileExists, SlowEpochsWhileFileExists, digits
from skorch import NeuralNetClassifier
from torch import nn

import scalekit as sk
from scalekit.events import EpochEnded, RankStatus, Recovered, Resized
from scalekit.session import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

X_TRAIN, _, Y_TRAIN, _ = digits()
FIT_TIMEOUT = 240
EPOCHS = 40


def report(line: str) -> None:
    print(f"[kube adaptive] {line}", flush=True)


def wait_until(condition, timeout: float, what: str, run=None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if run is not None and run.done:
            raise AssertionError(f"the fit ended ({run.status}: {run.error}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
    return result


def of(run, kind):
    return [e for e in run.events if isinstance(e, kind)]


def replicas(kube) -> int:
    (group,) = kube.dask("daskworkergroups")
    return int(group["spec"]["worker"]["replicas"])


def test_adaptive_during_a_fit_grows_to_its_demand_and_shrinks_at_an_epoch_boundary(
        notebook, tmp_path):
    kube = notebook
    # while the files exist, world 1 holds at each epoch end ("end"), then takes 1 s
    # more per epoch ("slow") while the new worker starts, and world 2 holds after step 3
    # of each epoch ("mid"): the test acts at known points whatever the machine's speed
    end, slow, mid = (tmp_path / name for name in ("hold-end", "slow", "hold-mid"))
    for path in (end, slow, mid):
        path.touch()
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        DigitsMLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.1,
        batch_size=64, max_epochs=EPOCHS, train_split=None, verbose=0,
        callbacks=[("end", HoldWhileFileExists(end, world=1)),
                   ("slow", SlowEpochsWhileFileExists(slow, 1.0, world=1)),
                   ("mid", HoldWhileFileExists(mid, at_batch=3, world=2))])
    with cluster(workers=1, backend="kubernetes") as s:
        run = sk.fit(net, X_TRAIN, Y_TRAIN, cluster=s, checkpoint=str(tmp_path / "ckpt"),
                     wait=False, show=False)
        try:
            wait_until(lambda: (tmp_path / "hold-end.held").exists(), FIT_TIMEOUT,
                       "epoch 1 to end on one worker", run)
            # the fit can use 8 ranks (64 samples a step, at least 8 each), the bounds 2;
            # the scheduler sees one busy task and would ask for 1
            asked = time.time()
            s.adapt(1, 2)
            wait_until(lambda: replicas(kube) == 2, 60, "adaptive to grow the worker group")
            decided = time.time()
            assert not kube.dask("daskautoscalers")  # decided in the notebook
            end.unlink()  # world 1 trains on while the new worker starts and warms up
            s.wait_for_workers(2, timeout=180)
            connected = time.time()
            wait_until(lambda: [e for e in of(run, Resized) if e.new == 2], FIT_TIMEOUT,
                       "the world to grow to 2", run)
            (grown,) = [e for e in of(run, Resized) if e.new == 2]
            slow.unlink()
            report(f"adapt(1, 2) -> worker group at 2: {decided - asked:.1f}s; "
                   f"2 workers connected: {connected - asked:.1f}s; world 2 from epoch "
                   f"{grown.epoch + 1}: {grown.time - decided:.1f}s after the decision")

            # world 2 is held mid-epoch: lower the bounds; the cluster keeps both ranks
            wait_until(lambda: (tmp_path / "hold-mid.held").exists(), FIT_TIMEOUT,
                       "world 2 to reach step 3 of an epoch", run)
            epoch = max(e.epoch for e in of(run, EpochEnded)) + 1  # the held one
            asked = time.time()
            s.adapt(1, 1)
            while time.time() - asked < 5.0:  # > wait-count x interval: it would have acted
                assert replicas(kube) == 2 and len(s.client.nthreads()) == 2
                time.sleep(0.2)
            mid.unlink()
            wait_until(lambda: [e for e in of(run, Resized) if e.new == 1], FIT_TIMEOUT,
                       "the world to shrink to 1", run)
            (shrunk,) = [e for e in of(run, Resized) if e.new == 1]
            report(f"adapt(1, 1) mid-epoch {epoch}: world 1 from epoch {shrunk.epoch + 1}, "
                   f"{shrunk.time - asked:.1f}s after asking (held 5s mid-epoch)")
            run.wait(timeout=FIT_TIMEOUT)
        finally:
            for path in (end, slow, mid):
                path.unlink(missing_ok=True)
            if not run.done:
                run.wait(timeout=FIT_TIMEOUT)
        assert run.status == "finished", run.error
        # the shrink came at the end of the held epoch, from the state in memory
        assert (shrunk.old, shrunk.epoch, shrunk.reason) == (2, epoch, "scale down")
        assert not of(run, Recovered)
        assert not [e for e in of(run, RankStatus) if e.state == "failed"]
        sizes = [e.world_size for e in of(run, EpochEnded)]
        assert [e.epoch for e in of(run, EpochEnded)] == list(range(1, EPOCHS + 1))
        assert [size for size, _ in itertools.groupby(sizes)] == [1, 2, 1], sizes
        assert replicas(kube) == 1 and s.backend.adaptive == (1, 1)
        s.wait_for_workers(1, timeout=120)
