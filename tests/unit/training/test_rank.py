"""The worker side of a round (scalekit.training.rank, .publisher): the rendezvous store
binds the worker's own address, the liveness beacon tells waiting from busy and stops
whatever fails after it started."""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import psutil
import pytest

from scalekit.training import rank as rank_module
from scalekit.training.publisher import Publisher, waits_for_peers
from scalekit.training.rank import listening_store


def listening_ports() -> dict[int, str]:
    return {c.laddr.port: c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_rendezvous_store_listens_on_the_workers_address_only():
    store = listening_store("127.0.0.1", 1, timedelta(seconds=5))
    store.set("k", "v")
    assert store.get("k") == b"v"
    assert listening_ports()[store.port] == "127.0.0.1"  # not "::" or "0.0.0.0"
    del store


def test_a_store_on_an_address_this_host_lacks_fails_and_leaks_no_socket():
    import torch  # noqa: F401  (the store's import, outside the count)

    before = len(psutil.Process().net_connections(kind="inet"))
    with pytest.raises(OSError):
        listening_store("192.0.2.1", 1, timedelta(seconds=1))  # TEST-NET-1, not ours
    assert len(psutil.Process().net_connections(kind="inet")) == before


def frame_in(filename: str):
    """The innermost frame of a thread blocked in code compiled as ``filename``."""
    namespace: dict = {}
    code = compile("def block(event):\n    event.wait()\n", filename, "exec")
    exec(code, namespace)
    event = threading.Event()
    thread = threading.Thread(target=namespace["block"], args=(event,), daemon=True)
    thread.start()
    time.sleep(0.05)
    frame = sys._current_frames()[thread.ident]
    while frame.f_code.co_filename != filename:  # below threading.Event.wait's frames
        frame = frame.f_back
    return frame, event


@pytest.mark.parametrize(("filename", "waiting"), [
    ("/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", True),
    ("/venv/lib/python3.11/site-packages/torch/autograd/graph.py", True),
    ("/work/scalekit/scalekit/training/host_reduce.py", True),
    ("/work/notebook/my_callbacks.py", False),
    ("/venv/lib/python3.11/site-packages/torch/nn/modules/linear.py", False),
    ("/venv/lib/python3.11/site-packages/skorch/net.py", False),
])
def test_waits_for_peers_reads_where_the_training_thread_is(filename, waiting):
    frame, event = frame_in(filename)
    try:
        assert waits_for_peers(frame) is waiting
    finally:
        event.set()


def test_waits_for_peers_of_no_thread():
    assert waits_for_peers(None) is False


class Worker:
    address = "tcp://127.0.0.1:1"

    def __init__(self):
        self.sent = []

    def log_event(self, topic, msg):
        self.sent.append(msg)


def test_beats_carry_the_host_identity_step_and_whether_the_rank_waits():
    from scalekit.training.dist_net import RankContext
    from scalekit.training.host_reduce import host_identity

    worker = Worker()
    spec = rank_module.RankSpec(run_id="r", generation=0, world_size=1, net=None,
                                max_epochs=1, topic="t", beacon_interval=0.05)
    publish = Publisher(worker, spec, 0)
    ctx = RankContext(rank=0, world_size=1)
    ctx.step = 7
    publish.start_beacon(ctx)
    try:
        time.sleep(0.3)
    finally:
        publish.stop_beacon()
    beats = [m for m in worker.sent if m["kind"] == "beat"]
    assert len(beats) >= 2
    assert {b["host"] for b in beats} == {host_identity()}  # hostname *and* boot id
    assert beats[-1]["step"] == 7
    assert beats[-1]["waiting"] is False  # this thread sleeps in time.sleep: busy


def beacon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "scalekit-beacon" and t.is_alive()}


def test_the_beacon_stops_when_the_round_fails_before_training(monkeypatch):
    """Whatever fails once the beacon runs (here: making the net distributed), the
    beacon stops; before the fix it beat on for the rest of the worker's life."""
    import torch.distributed as dist
    from skorch import NeuralNetClassifier
    from torch import nn

    def broken(*args, **kwargs):
        raise RuntimeError("make_distributed failed")

    monkeypatch.setattr(rank_module, "make_distributed", broken)
    net = NeuralNetClassifier(nn.Linear, module__in_features=4, module__out_features=2,
                              criterion=nn.CrossEntropyLoss, max_epochs=1).initialize()
    spec = rank_module.RankSpec(run_id="r", generation=0, world_size=1, net=net,
                                max_epochs=1, topic="t", beacon_interval=0.05)
    publish = Publisher(Worker(), spec, 0)
    before = beacon_threads()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="make_distributed failed"):
            rank_module._train(spec, 0, "tcp://127.0.0.1:1", None, None, publish)
    finally:
        dist.destroy_process_group()
    deadline = time.monotonic() + 2.0
    while beacon_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not beacon_threads() - before  # (other tests' beacons may still be ending)


def test_a_spec_whose_rank_trained_pickles_as_a_spent_marker():
    """Dask may spill the RankSpec of a running rank when its worker is short of memory;
    the net in it is trained in place (wrapped, with generators and shared memory) and
    does not pickle. The spec pickles as a marker that refuses to start a rank."""
    import pickle

    import numpy as np
    import torch.distributed as dist
    from skorch import NeuralNetClassifier
    from torch import nn

    net = NeuralNetClassifier(nn.Linear, module__in_features=4, module__out_features=2,
                              criterion=nn.CrossEntropyLoss, max_epochs=1,
                              train_split=None).initialize()
    spec = rank_module.RankSpec(run_id="r", generation=3, world_size=1, net=net,
                                max_epochs=1, topic="t", beacon_interval=0.05)
    fresh = pickle.loads(pickle.dumps(spec))  # before training: the whole spec
    assert isinstance(fresh, rank_module.RankSpec) and fresh.net.initialized_
    X = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        rank_module._train(spec, 0, "tcp://127.0.0.1:1", X, y, Publisher(Worker(), spec, 0))
    finally:
        dist.destroy_process_group()
    spent = pickle.loads(pickle.dumps(spec))
    assert isinstance(spent, rank_module.SpentRankSpec)
    with pytest.raises(RuntimeError, match="run r .generation 3. was pickled after a rank"):
        spent.net  # noqa: B018
