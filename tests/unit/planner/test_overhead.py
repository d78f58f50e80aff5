"""The fit's overhead: fitted to timed probes, it recovers the costs that made them, and
a whole fit's predicted wall time adds them to the per-sample work."""

from __future__ import annotations

import pytest

from scalekit.planner.model import Measurement, fit_scaling_model
from scalekit.planner.overhead import OverheadModel, describe, fit_overhead, fit_seconds

MiB = 2**20


def timed(strategy, workers, *, fit, epoch, gpus=0, rate=500 * MiB, sps=100_000.0,
          threads=1):
    return Measurement(strategy, workers, threads, sps, gpus=gpus, fit_overhead_s=fit,
                       epoch_overhead_s=epoch, send_bytes_per_s=rate)


def test_recovers_base_costs_and_what_each_further_worker_adds():
    # f = 0.12 s, ddp +0.05 s and fsdp +0.4 s per further worker; g = 8 ms per epoch,
    # ddp +2 ms, fsdp +30 ms per further worker
    measured = [
        timed("ddp", 1, fit=0.12, epoch=0.008),
        timed("ddp", 2, fit=0.17, epoch=0.010),
        timed("ddp", 4, fit=0.27, epoch=0.014),
        timed("fsdp", 2, fit=0.52, epoch=0.038),
        timed("fsdp", 4, fit=1.32, epoch=0.098),
    ]
    model = fit_overhead(measured)
    assert model.per_fit == pytest.approx(0.12, abs=1e-6)
    assert model.per_epoch == pytest.approx(0.008, abs=1e-6)
    assert model.per_fit_worker == pytest.approx({"ddp": 0.05, "fsdp": 0.4}, abs=1e-6)
    assert model.per_epoch_worker == pytest.approx({"ddp": 0.002, "fsdp": 0.03}, abs=1e-6)
    assert model.fit("fsdp", 8) == pytest.approx(0.12 + 7 * 0.4, abs=1e-6)
    assert model.epoch("ddp", 8) == pytest.approx(0.008 + 7 * 0.002, abs=1e-6)
    # hybrid, not timed: what fsdp's further workers add (the closest strategy)
    assert model.fit("hybrid", 4) == pytest.approx(model.fit("fsdp", 4))
    assert model.notes == ()


def test_gpu_workers_add_their_own_fixed_costs():
    measured = [timed("ddp", 1, fit=0.1, epoch=0.01), timed("ddp", 2, fit=0.15, epoch=0.012),
                timed("ddp", 1, fit=0.6, epoch=0.02, gpus=1),  # the CUDA context, NCCL
                timed("ddp", 2, fit=0.65, epoch=0.022, gpus=1)]
    model = fit_overhead(measured)
    assert model.gpu_per_fit == pytest.approx(0.5, abs=1e-6)
    assert model.gpu_per_epoch == pytest.approx(0.01, abs=1e-6)
    assert model.fit("ddp", 1, gpus=1) == pytest.approx(0.6, abs=1e-6)
    assert model.fit("ddp", 1) == pytest.approx(0.1, abs=1e-6)
    assert "GPU workers +500 ms per fit" in describe(model)


def test_only_gpu_workers_timed():
    model = fit_overhead([timed("ddp", 1, fit=0.6, epoch=0.02, gpus=1)])
    assert model.fit("ddp", 1, gpus=1) == pytest.approx(0.6)
    assert model.fit("ddp", 1) == 0.0
    assert any("CPU workers' overhead not measured" in n for n in model.notes)


def test_data_transfer_is_bytes_times_workers_at_the_measured_rate():
    measured = [timed("ddp", 1, fit=0.1, epoch=0.01, rate=400 * MiB),
                timed("ddp", 2, fit=0.1, epoch=0.01, rate=500 * MiB),
                timed("ddp", 1, fit=0.1, epoch=0.01, rate=1 * MiB)]  # one disturbed timing
    model = fit_overhead(measured)
    assert model.seconds_per_byte == pytest.approx(1 / (400 * MiB))  # the median
    assert model.transfer(3, 200 * MiB) == pytest.approx(1.5)
    assert model.total("ddp", 3, epochs=5, data_bytes=200 * MiB) == pytest.approx(
        model.fit("ddp", 3) + 1.5 + 5 * model.epoch("ddp", 3))


def test_untimed_measurements_give_steady_state_predictions_and_say_so():
    model = fit_overhead([Measurement("ddp", 1, 1, 1000.0), Measurement("ddp", 2, 1, 1800.0)])
    assert model == OverheadModel(notes=model.notes)
    assert not model.measured
    assert any("predictions are steady-state rates" in n for n in model.notes)
    assert any("data transfer to the workers not measured" in n for n in model.notes)
    assert describe(model) == "overhead: not measured (steady-state rates)"


def test_without_multi_worker_timings_further_workers_add_nothing_known():
    model = fit_overhead([timed("ddp", 1, fit=0.2, epoch=0.01)])
    assert model.fit("ddp", 4) == pytest.approx(0.2)
    assert any("no multi-worker fit timed" in n for n in model.notes)


def test_fit_seconds_adds_the_overhead_to_the_work():
    model = OverheadModel(per_fit=0.2, per_epoch=0.01, per_fit_worker={"ddp": 0.05},
                          seconds_per_byte=1e-9)
    seconds = fit_seconds(1e-5, model, "ddp", 2, epochs=4, n_samples=50_000,
                          data_bytes=10**8)
    assert seconds == pytest.approx(4 * 50_000 * 1e-5 + 0.25 + 0.2 + 4 * 0.01)
    with pytest.raises(ValueError, match="epochs >= 1 and n_samples >= 1"):
        fit_seconds(1e-5, model, "ddp", 1, epochs=0, n_samples=10)


def test_end_to_end_samples_per_s_of_a_short_and_a_long_fit():
    """The issue's case: the steady rate over-promises a short fit, less a long one."""
    measured = [timed("ddp", 1, fit=0.3, epoch=0.02, sps=50_000.0, rate=0.0)]
    model = fit_scaling_model(measured)
    steady, _ = model.predict("ddp", 1)
    short, _ = model.predict("ddp", 1, epochs=2, n_samples=50_000)
    long, _ = model.predict("ddp", 1, epochs=50, n_samples=500_000)
    assert steady == pytest.approx(50_000.0)
    assert short == pytest.approx(100_000 / (2.0 + 0.3 + 0.04))
    assert short < 0.9 * steady < long < steady
    assert model.fit_seconds("ddp", 1, epochs=2, n_samples=50_000) == pytest.approx(2.34)


def test_describe_names_every_term():
    model = OverheadModel(per_fit=0.21, per_fit_worker={"ddp": 0.04, "fsdp": 0.0},
                          per_epoch=0.009, seconds_per_byte=1 / (700 * MiB))
    assert describe(model) == ("overhead: 210 ms per fit (+ per further worker: 40 ms ddp), "
                               "9 ms per epoch, data sent at 700 MiB/s per worker")


def test_negative_or_missing_timings_are_refused():
    with pytest.raises(ValueError, match="Measurement.fit_overhead_s: got -0.1"):
        Measurement("ddp", 1, 1, 10.0, fit_overhead_s=-0.1)
    with pytest.raises(ValueError, match="Measurement.send_bytes_per_s"):
        Measurement("ddp", 1, 1, 10.0, send_bytes_per_s=float("inf"))
