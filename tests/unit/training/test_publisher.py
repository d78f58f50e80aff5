"""What a rank tells the controller about its progress (scalekit.training.publisher)."""

from __future__ import annotations

import time

from scalekit.training.publisher import Publisher
from scalekit.training.rank import RankSpec


class Worker:
    address = "tcp://127.0.0.1:1"

    def __init__(self):
        self.sent = []

    def log_event(self, topic, message):
        self.sent.append(message)


def publisher(interval=0.0):
    spec = RankSpec(run_id="r", generation=0, world_size=1, net=None, max_epochs=3,
                    topic="t", progress_interval=max(interval, 0.1))
    worker = Worker()
    return Publisher(worker, spec, 0), worker


def rates(worker):
    return [m["samples_per_s"] for m in worker.sent if m["kind"] == "batch"]


def test_the_first_step_of_an_epoch_reports_no_rate_rather_than_samples_over_zero():
    """The sidebar once showed 64000000000 samples/s: 64 samples over the 1e-9 s floor
    of a rate measured from the very step that started the epoch."""
    pub, worker = publisher()
    pub.batch(epoch=0, batch=1, n_batches=10, samples=64)
    assert rates(worker) == [0.0]


def test_a_resumed_epoch_measures_from_where_it_resumed():
    pub, worker = publisher()
    pub.batch(epoch=2, batch=5, n_batches=10, samples=64)  # resumed mid-epoch
    time.sleep(0.2)
    pub.batch(epoch=2, batch=10, n_batches=10, samples=384)
    first, last = rates(worker)
    assert first == 0.0
    assert 0 < last <= 320 / 0.2  # the 320 samples since, over at least 0.2 s
