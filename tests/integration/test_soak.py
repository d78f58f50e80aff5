"""A seeded fault soak: random SIGKILLs, SIGSTOPs and resizes every 3-7 s through a
30-epoch fit on three workers, for several seeds. Each disturbed fit must finish, within
one point of the undisturbed fit's accuracy (issue 13, item 17: one run in four used to
die when a worker was killed while the next round was being set up).

    pytest tests/integration/test_soak.py -m slow -s   # prints each seed's disturbances
"""

from __future__ import annotations

import os
import random
import signal
import time

import dask.config
import psutil
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn
from training_models import WideMLP, digits_x4

import scalekit as sk
from scalekit.events import Recovered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

import numpy as np  # noqa: E402

_X, X_TEST, _Y, Y_TEST = digits_x4()
X_TRAIN, Y_TRAIN = np.concatenate([_X] * 3), np.concatenate([_Y] * 3)  # ~1.5 s an epoch
EPOCHS = 30
SEEDS = (11, 22, 33)
FIT_TIMEOUT = 600


def make_net():
    torch.manual_seed(0)
    return NeuralNetClassifier(
        WideMLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.05,
        optimizer__momentum=0.9, batch_size=64, max_epochs=EPOCHS,
        iterator_train__shuffle=True, train_split=None, verbose=0)


def accuracy(net) -> float:
    return float(net.score(X_TEST, Y_TEST))


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> float:
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path_factory.mktemp("ref"))}):
        session = sk.cluster(workers=1)
        try:
            session.wait_for_workers(1, timeout=120)
            run = sk.fit(make_net(), X_TRAIN, Y_TRAIN, cluster=session, show=False,
                         checkpoint=False)
            return accuracy(run.net)
        finally:
            session.close()


def worker_processes() -> list[psutil.Process]:
    """The running Dask worker processes this test started (children of its nannies,
    which live in this process), in pid order."""
    found = []
    for child in psutil.Process().children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() not in (
                    psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return sorted(found, key=lambda p: p.pid)


class Disturber:
    """Seeded faults against a running fit: kill or stop a worker process, or resize."""

    def __init__(self, session, seed: int) -> None:
        self.session = session
        self.rng = random.Random(seed)
        self.stopped: list[int] = []
        self.log: list[str] = []

    def act(self) -> None:
        action = self.rng.choices(("kill", "stop", "resize"), weights=(4, 3, 3))[0]
        processes = worker_processes()
        if action == "resize" or len(processes) < 2:
            n = self.rng.choice((1, 2, 3))
            self.session.scale(n)
            self.log.append(f"scale {n}")
            return
        # the worker processes themselves, not through Dask: a stopped one answers nothing
        victim = self.rng.choice(processes)
        try:
            if action == "kill":
                victim.kill()
            else:
                victim.suspend()  # SIGSTOP: a hang the fit must find and end
                self.stopped.append(victim.pid)
        except psutil.NoSuchProcess:
            return
        self.log.append(f"{action} {victim.pid}")

    def release(self) -> None:
        for pid in self.stopped:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass


@pytest.mark.parametrize("seed", SEEDS)
def test_a_fit_survives_random_kills_stops_and_resizes(seed, undisturbed, tmp_path):
    with dask.config.set({"scalekit.checkpoint.root": str(tmp_path / "default")}):
        session = sk.cluster(workers=3)
    disturber = Disturber(session, seed)
    try:
        session.wait_for_workers(3, timeout=120)
        started = time.monotonic()
        run = sk.fit(make_net(), X_TRAIN, Y_TRAIN, cluster=session, show=False,
                     checkpoint=str(tmp_path / "ckpt"), wait=False)
        deadline = time.monotonic() + FIT_TIMEOUT
        while not run.done and time.monotonic() < deadline:
            pause = disturber.rng.uniform(3.0, 7.0)
            until = time.monotonic() + pause
            while not run.done and time.monotonic() < until:
                time.sleep(0.1)
            if not run.done:
                disturber.act()
        net = run.wait(timeout=60)
        got = accuracy(net)
        recovered = [e for e in run.events if isinstance(e, Recovered)]
        print(f"\n[soak] seed {seed}: {time.monotonic() - started:.0f}s, "
              f"{len(disturber.log)} disturbances "
              f"({', '.join(disturber.log)}), {len(recovered)} recoveries, accuracy "
              f"{got:.4f} (undisturbed {undisturbed:.4f})", flush=True)
        assert run.status == "finished"
        assert net.history[:, "epoch"] == list(range(1, EPOCHS + 1))
        assert len(disturber.log) >= 3  # it really was disturbed
        assert abs(got - undisturbed) <= 0.01
    finally:
        disturber.release()
        session.close()
