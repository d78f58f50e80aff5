"""A probe fit's timeline, split into per-sample work, per-epoch and per-fit overhead."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scalekit.planner.model import fit_scaling_model
from scalekit.planner.probe import ProbeConfig
from scalekit.planner.timing import Observed, data_bytes, epoch_constant

REPORT = SimpleNamespace(strategy="ddp", world_size=1, samples_per_s=1.0, state_bytes=(100,),
                         peak_rss=(1000,))


def observed(n, *, t=1e-5, c=0.002, warmup=0.1, between=0.008, start=0.15, tail=0.05,
             epochs=4, transfer=0.01, rate=1e8, jitter=()):
    """The timeline of a fit whose epochs take ``c + n t`` (the first ``warmup`` more)."""
    durs, ends, now = [], [], start
    for e in range(epochs):
        dur = c + n * t + (warmup if e == 0 else 0.0) + (jitter[e] if e < len(jitter) else 0)
        if e:
            now += between
        now += dur
        durs.append(dur)
        ends.append(now)
    return Observed(config=ProbeConfig("ddp", 1, 1), report=REPORT, n_samples=n,
                    durs=tuple(durs), ends=tuple(ends), wall=now + tail + transfer,
                    transfer=transfer, send_rate=rate)


def test_the_wall_time_splits_into_its_parts():
    o = observed(5000)
    assert o.steady == pytest.approx(0.052)
    assert o.between == pytest.approx(0.008)
    m = o.measurement(per_epoch=0.002)
    assert m.samples_per_s == pytest.approx(5000 / 0.05)
    assert m.epoch_overhead_s == pytest.approx(0.010)
    # start, the first epoch's warm-up and the tail, less the between counted once more
    assert m.fit_overhead_s == pytest.approx(0.15 + 0.1 + 0.05 - 0.008)
    assert m.send_bytes_per_s == 1e8
    assert (m.strategy, m.workers, m.state_bytes, m.peak_rss) == ("ddp", 1, 100, 1000)


def test_a_model_of_one_probe_gives_back_its_wall_time():
    o = observed(5000)
    model = fit_scaling_model([o.measurement(per_epoch=0.002)])
    # the probe sent 1 MB to its one worker in 0.01 s
    predicted = model.fit_seconds("ddp", 1, epochs=4, n_samples=5000, data_bytes=10**6)
    assert predicted == pytest.approx(o.wall)
    # and a ten times longer fit pays the per-sample work ten times, the rest not
    longer = model.fit_seconds("ddp", 1, epochs=4, n_samples=50_000, data_bytes=10**6)
    assert longer == pytest.approx(o.wall + 4 * 45_000 * 1e-5)


def test_the_part_of_an_epoch_that_does_not_grow_with_its_samples():
    # the reference allocation on 5,000 samples and on two batches of 128
    assert epoch_constant(observed(5000), observed(256, epochs=8)) == pytest.approx(0.002)
    assert epoch_constant(observed(5000, c=0.0), observed(256, c=0.0)) == pytest.approx(
        0.0, abs=1e-12)
    # noise: the small epochs measured slower per sample than the whole fit would allow,
    # no evidence of a constant
    assert epoch_constant(observed(5000), observed(256, t=5e-4)) == 0.0
    # at most the small epoch itself
    assert epoch_constant(observed(5000, t=1e-6), observed(256, t=1e-6, c=0.01)) <= \
        observed(256, t=1e-6, c=0.01).steady
    assert epoch_constant(observed(100), observed(100)) == 0.0


def test_the_constant_is_capped_at_a_quarter_of_the_probes_epoch():
    m = observed(5000).measurement(per_epoch=0.5)
    assert m.samples_per_s == pytest.approx(5000 / (0.75 * 0.052))


def test_the_mean_of_the_epochs_after_the_first_counts_a_disturbance():
    o = observed(5000, jitter=(0.0, 0.0, 0.03, 0.0))  # one epoch interrupted
    assert o.steady == pytest.approx(0.052 + 0.01)


@pytest.mark.parametrize(("data", "nbytes"), [
    (np.zeros((10, 4), dtype=np.float32), 160),
    (torch.zeros(10, 4, dtype=torch.float64), 320),
    ({"a": np.zeros(10, dtype=np.int64), "b": torch.zeros(5, dtype=torch.int8)}, 85),
    ([np.zeros(3, dtype=np.int16), np.zeros(2, dtype=np.int16)], 10),
    ([1, 2, 3], 0),  # plain Python objects: unknown
    (None, 0),
])
def test_data_bytes(data, nbytes):
    assert data_bytes(data) == nbytes


def test_data_bytes_of_a_dataset_is_unknown():
    from torch.utils.data import TensorDataset

    assert data_bytes(TensorDataset(torch.zeros(4))) == 0


def test_data_bytes_of_a_frame():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": np.zeros(10, dtype=np.float32), "b": np.zeros(10)})
    assert data_bytes(frame) == 120
