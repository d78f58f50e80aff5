"""Models and data for tests/integration/test_training.py and test_elastic.py.

They live in an importable module, not inside test functions: the workers unpickle the
nets the tests send them, and that needs the classes to be importable by name.
"""

from __future__ import annotations

import os

import numpy as np
from skorch.callbacks import Callback
from torch import nn

FAIL_ENV = "SCALEKIT_TEST_FAIL_IN_FORWARD"


class DigitsMLP(nn.Module):
    """8x8 digit images in, class probabilities out (skorch's NeuralNetClassifier
    applies NLLLoss to the log of the output)."""

    def __init__(self, n_in: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10), nn.Softmax(dim=-1)
        )

    def forward(self, X):
        return self.seq(X)


class FailingMLP(DigitsMLP):
    """Raises in forward on a worker where ``FAIL_ENV`` is set (see ``client.run``)."""

    def forward(self, X):
        if os.environ.get(FAIL_ENV):
            raise RuntimeError(f"injected failure in forward ({FAIL_ENV} is set)")
        return super().forward(X)


def set_failing(on: bool) -> bool:
    """Run on a worker with ``client.run``: make ``FailingMLP`` fail there (or not).

    (``client.run(os.environ.__setitem__, ...)`` would not do: that bound method pickles
    a *copy* of this process's ``os.environ``.)
    """
    if on:
        os.environ[FAIL_ENV] = "1"
    else:
        os.environ.pop(FAIL_ENV, None)
    return FAIL_ENV in os.environ


class Logits(nn.Module):
    """A plain torch model for ``sk.train`` (logits; CrossEntropyLoss)."""

    def __init__(self, n_in: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, X):
        return self.seq(X)


NOTEBOOK_CELL = """
from torch import nn


class NotebookMLP(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, X):
        return self.seq(X)
"""


def notebook_class():
    """A module class as a notebook cell defines it: in ``__main__``, where the workers
    cannot import it from, so it must travel by value."""
    namespace = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, "<notebook cell>", "exec"), namespace)
    cls = namespace["NotebookMLP"]
    assert cls.__module__ == "__main__"
    return cls


def digits():
    """load_digits as float32 in [0, 1] and int64 labels, split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


# -- tests/integration/test_elastic.py --------------------------------------------------


class WideMLP(nn.Module):
    """64 -> 256 -> 256 -> 10 (logits; use CrossEntropyLoss): big enough that an epoch of
    :func:`digits_x4` takes about a second, so injected faults land mid-epoch."""

    def __init__(self, n_in: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, X):
        return self.seq(X)


def digits_x4():
    """:func:`digits` with the training set repeated four times (same test set)."""
    X_train, X_test, y_train, y_test = digits()
    return np.concatenate([X_train] * 4), X_test, np.concatenate([y_train] * 4), y_test


class _SlowWrites:
    """An fsspec filesystem stand-in: writes of the temporary files of chosen checkpoints
    trickle out in small chunks, so a test can kill the writer in the middle."""

    def __init__(self, fs, slow_names, seconds):
        self._fs = fs
        self._slow = tuple(slow_names)
        self._seconds = seconds

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def open(self, path, mode="rb", *args, **kwargs):
        f = self._fs.open(path, mode, *args, **kwargs)
        base = str(path).rsplit("/", 1)[-1]
        if "w" in mode and base.endswith(".tmp") and any(n in base for n in self._slow):
            return _Trickle(f, self._seconds)
        return f


class _Trickle:
    def __init__(self, f, seconds, chunks=20):
        self.f, self.seconds, self.chunks = f, seconds, chunks

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def write(self, data):
        import time

        step = max(1, -(-len(data) // self.chunks))
        for start in range(0, len(data), step):
            self.f.write(data[start:start + step])
            self.f.flush()
            time.sleep(self.seconds / self.chunks)
        return len(data)


def slow_store(url, slow_names=(), seconds=2.0, keep=3):
    """A CheckpointStore at ``url`` whose writes of ``slow_names`` (e.g.
    ``"ckpt-000003-00000000.pt"``) take ``seconds``; it pickles as these arguments."""
    from scalekit.training.checkpoint import CheckpointStore

    class SlowStore(CheckpointStore):
        def __reduce__(self):
            return (slow_store, (self.url, slow_names, seconds, self.keep))

    store = SlowStore(url, keep=keep)
    store.fs = _SlowWrites(store.fs, slow_names, seconds)
    return store


class HoldWhileFileExists(Callback):
    """Keeps every rank still while ``path`` exists, so a test can act at a known point of
    a fit (e.g. while new workers start, or to kill a rank mid-epoch whatever the speed of
    the machine). It holds at the end of each epoch, or with ``at_batch`` after that
    training step of each epoch (counted from the epoch's start, across resumes). It
    changes no number of the training. While holding it creates ``path + ".held"``.

    A file that holds a number ``k`` holds only in epochs after the k-th: a test can arm
    a hold ahead of time, while the fit waits elsewhere, without racing it."""

    def __init__(self, path, at_batch=None):
        self.path = str(path)
        self.at_batch = at_batch

    def on_epoch_end(self, net, **kwargs):
        if self.at_batch is None:
            self._hold(len(net.history))

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.at_batch is not None:
            if len(net.history[-1]["batches"]) == self.at_batch:
                self._hold(len(net.history))

    def _hold(self, epoch):
        import time

        if not os.path.exists(self.path):
            return
        try:
            with open(self.path) as f:
                after = int(f.read().strip() or 0)
        except (OSError, ValueError):
            after = 0
        if epoch <= after:
            return
        open(self.path + ".held", "w").close()
        while os.path.exists(self.path):
            time.sleep(0.05)


class DeadlockOnce(Callback):
    """Deadlocks rank ``rank`` after training step ``at_batch`` of epoch ``epoch`` (a lock
    acquired twice: its beacon thread keeps beating), once: it first creates ``path``,
    and a rank that finds ``path`` there goes on (the restarted worker, after recovery)."""

    def __init__(self, path, rank=1, epoch=3, at_batch=1):
        self.path, self.rank, self.epoch, self.at_batch = str(path), rank, epoch, at_batch

    def on_batch_end(self, net, training=False, **kwargs):
        import threading

        ctx = getattr(net, "_sk_ctx", None)
        if (not training or ctx is None or ctx.rank != self.rank
                or len(net.history) != self.epoch
                or len(net.history[-1]["batches"]) != self.at_batch
                or os.path.exists(self.path)):
            return
        open(self.path, "w").close()
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # never returns


# -- tests/integration/test_skorch_callbacks.py ------------------------------------------------


def rank_of(net):
    """The rank a callback runs on (``"notebook"`` outside a round)."""
    ctx = getattr(net, "_sk_ctx", None)
    return "notebook" if ctx is None else ctx.rank


HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


def _record(folder, label, net, method):
    with open(os.path.join(folder, f"{label}.{rank_of(net)}.{os.getpid()}"), "a") as f:
        f.write(f"{method} {len(net.history)}\n")


def counted(cls):
    """``cls`` (a skorch callback class) that also writes each hook call, one line
    "<hook> <epoch>", to ``<folder>/<label>.<rank>.<pid>`` (``folder`` and ``label`` are
    the first two arguments; the others go to ``cls``)."""

    def __init__(self, folder, label, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        # trailing "_": LRScheduler passes its other attributes on to the scheduler
        vars(self).update(folder_=str(folder), label_=label)

    def hook(method):
        def call(self, net, *args, **kwargs):
            _record(self.folder_, self.label_, net, method)
            return getattr(cls, method)(self, net, *args, **kwargs)
        return call

    name = f"Counted{cls.__name__}"
    body = {"__init__": __init__, "__module__": __name__, "__qualname__": name}
    body.update({m: hook(m) for m in HOOKS})
    return type(name, (cls,), body)


def _counted_classes():
    from skorch import callbacks as cbs

    return {c.__name__: counted(c) for c in (
        cbs.PrintLog, cbs.Checkpoint, cbs.TensorBoard, cbs.EarlyStopping, cbs.LRScheduler,
        cbs.EpochScoring, cbs.GradientNormClipping, cbs.Callback)}


globals().update({f"Counted{k}": v for k, v in _counted_classes().items()})

FAKE_SCORES = (5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5)


class FakeScore(Callback):
    """Records ``FAKE_SCORES[epoch - 1]`` as batch value ``"fake"`` of each training
    batch (``PassthroughScoring(name="fake", on_train=True)`` makes it the epoch's
    ``fake`` and ``fake_best``): a score that improves for 3 epochs and then gets worse,
    whatever the model learns, on every rank alike."""

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            net.history.record_batch("fake", FAKE_SCORES[len(net.history) - 1])


class RaiseOnRank(Callback):
    """Raises at the end of epoch ``epoch`` on rank ``rank`` only."""

    def __init__(self, rank=1, epoch=2):
        self.rank, self.epoch = rank, epoch

    def on_epoch_end(self, net, **kwargs):
        if rank_of(net) == self.rank and len(net.history) == self.epoch:
            raise RuntimeError(f"callback failed on rank {self.rank} in epoch {self.epoch}")


def _checkpoint_class():
    from skorch.callbacks import Checkpoint

    class SaveCountingCheckpoint(Checkpoint):
        """skorch's Checkpoint that also writes "save <epoch>" to
        ``<folder>/saves.<rank>.<pid>`` each time it saves."""

        def __init__(self, folder, **kwargs):
            super().__init__(**kwargs)
            vars(self)["folder"] = str(folder)

        def save_model(self, net):
            _record(self.folder, "saves", net, "save")
            return super().save_model(net)

    SaveCountingCheckpoint.__module__ = __name__
    SaveCountingCheckpoint.__qualname__ = "SaveCountingCheckpoint"  # importable by name
    return SaveCountingCheckpoint


SaveCountingCheckpoint = _checkpoint_class()


def read_calls(folder, label):
    """{rank: [(hook, epoch), ...]} from the files of ``counted`` callbacks."""
    found = {}
    for name in sorted(os.listdir(folder)):
        got_label, rank, _pid = name.rsplit(".", 2)
        if got_label != label:
            continue
        with open(os.path.join(folder, name)) as f:
            calls = [(hook, int(epoch)) for hook, epoch in (line.split() for line in f)]
        found.setdefault(rank, []).extend(calls)
    return found


def detached_net_and_data(max_epochs=6, **kwargs):
    """A small, deterministic digits fit for the detached-run tests."""
    import torch
    from skorch import NeuralNetClassifier

    X_train, _, y_train, _ = digits()
    torch.manual_seed(0)
    net = NeuralNetClassifier(WideMLP, criterion=nn.CrossEntropyLoss, lr=0.05,
                              optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                              batch_size=64, max_epochs=max_epochs, train_split=None,
                              verbose=0, **kwargs)
    return net, X_train, y_train
