"""The scaling model: fitted to measurements, it recovers the numbers that made them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from scalekit.planner.model import (
    Measurement,
    amdahl,
    fit_memory,
    fit_scaling_model,
    fit_throughput,
    shard_of,
)

from .measured import GiB, MiB, one_machine, synthetic

# a grid on which every parameter is identifiable: threads vary at one and at two workers
GRID = [("ddp", w, t, 0) for w in (1, 2, 4, 8) for t in (1, 2, 4)] + [
    ("fsdp", w, 1, 0) for w in (2, 4, 8)] + [("hybrid", w, 1, 0) for w in (4, 8)]


@pytest.mark.parametrize(("a", "b", "p", "comm"), [
    (2.8e-5, 2e-6, 0.9, {"ddp": 1.5e-5, "fsdp": 4e-5, "hybrid": 3e-5}),  # CPU, small MLP
    (1e-3, 0.0, 0.5, {"ddp": 1e-4, "fsdp": 3e-4, "hybrid": 2e-4}),       # threads help less
    (5e-4, 1e-4, 1.0, {"ddp": 0.0, "fsdp": 1e-5, "hybrid": 5e-6}),       # free all-reduce
    (3e-5, 1e-5, 0.7, {"ddp": 2e-5, "fsdp": 2e-5, "hybrid": 2e-5}),
])
def test_fit_recovers_known_parameters(a, b, p, comm):
    model = fit_throughput(synthetic(a, b, p, comm, configs=GRID))
    assert model.a == pytest.approx(a, rel=1e-3)
    assert model.b == pytest.approx(b, rel=1e-3, abs=1e-9)
    assert model.p == pytest.approx(p, abs=0.011)  # the grid's step is 0.01
    for s, c in comm.items():
        assert model.comm[s] == pytest.approx(c, rel=1e-3, abs=1e-9)
    assert model.rms_error < 1e-3


def test_fit_is_close_with_measurement_noise():
    a, b, p = 2.8e-5, 2e-6, 0.9
    comm = {"ddp": 1.5e-5, "fsdp": 4e-5, "hybrid": 3e-5}
    noise = [0.04, -0.03, 0.02, -0.05, 0.01, 0.03, -0.02]  # a shared machine's +-5 %
    measured = synthetic(a, b, p, comm, configs=GRID, noise=noise)
    model = fit_throughput(measured)
    assert 0.01 < model.rms_error < 0.05
    for strategy, w, t, _ in [("ddp", 1, 1, 0), ("ddp", 8, 4, 0), ("fsdp", 8, 1, 0)]:
        truth = 1 / (a / (w * amdahl(t, p)) + b + comm[strategy] * math.log2(w))
        assert model.samples_per_s(strategy, w, t) == pytest.approx(truth, rel=0.08)


def test_four_probes_on_one_machine_reproduce_what_they_measured():
    measured = one_machine()
    model = fit_throughput(measured)
    for m in measured:
        assert model.samples_per_s(m.strategy, m.workers, m.threads) == pytest.approx(
            m.samples_per_s, rel=0.01)
    assert model.comm["fsdp"] > model.comm["ddp"] > 0
    # threads measured at 1 and 2: of the parallel fractions that fit, the smallest
    # (the cautious extrapolation to more threads)
    assert 0.8 < model.p < 0.9
    assert not [n for n in model.notes if "thread" in n]
    assert [n for n in model.notes if n.startswith("hybrid not measured")]


def test_without_a_second_thread_count_threads_are_assumed_not_to_help():
    measured = [m for m in one_machine() if m.threads == 1]
    model = fit_throughput(measured)
    assert model.p == 0.0
    assert model.samples_per_s("ddp", 1, 8) == pytest.approx(model.samples_per_s("ddp", 1, 1))
    assert any("only 1 thread(s) per worker measured" in n for n in model.notes)


def test_without_multi_worker_measurements_communication_is_unknown():
    model = fit_throughput([Measurement("ddp", 1, 1, 1000.0), Measurement("ddp", 1, 2, 1800.0)])
    assert model.comm == {}
    assert any("no multi-worker measurement" in n for n in model.notes)
    assert model.samples_per_s("ddp", 2, 1) > 1000.0


def test_measurements_the_model_cannot_follow_are_flagged():
    # two threads measured slower than one (threads fighting over a busy machine):
    # Amdahl's law cannot slow down, so the fit is poor and says so
    measured = [Measurement("ddp", 1, 1, 10_000.0), Measurement("ddp", 1, 2, 2_000.0),
                Measurement("ddp", 2, 1, 7_000.0), Measurement("fsdp", 2, 1, 1_000.0)]
    model = fit_throughput(measured)
    assert model.rms_error > 0.2
    assert any(n.startswith("the measurements disagree with the model") for n in model.notes)
    assert not any("disagree" in n for n in fit_throughput(one_machine()).notes)


def test_unmeasured_strategies_borrow_the_closest_communication_cost():
    model = fit_throughput(one_machine())
    assert model.comm_of("hybrid") == model.comm["fsdp"]
    assert model.comm_of("local_sgd") == model.comm["ddp"]


def test_gpu_measurements_get_their_own_compute_term():
    configs = [("ddp", 1, 1, 0), ("ddp", 2, 1, 0), ("ddp", 1, 2, 0), ("ddp", 1, 1, 1),
               ("ddp", 2, 1, 1)]
    measured = synthetic(1e-3, 1e-5, 0.8, {"ddp": 1e-5}, configs=configs, a_gpu=2e-5)
    model = fit_throughput(measured)
    assert model.a_gpu == pytest.approx(2e-5, rel=1e-3)
    assert model.samples_per_s("ddp", 2, 1, gpus=1) > 10 * model.samples_per_s("ddp", 2, 1)
    cpu_only = fit_throughput([m for m in measured if not m.gpus])
    with pytest.raises(ValueError, match="no GPU measurement"):
        cpu_only.samples_per_s("ddp", 1, 1, gpus=1)


# -- memory --------------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "workers", "shard_size", "shard"), [
    ("ddp", 4, None, 1), ("local_sgd", 4, None, 1), ("fsdp", 4, None, 4), ("fsdp", 1, None, 1),
    ("hybrid", 4, 2, 2), ("hybrid", 8, 4, 4), ("hybrid", 6, 4, 3), ("hybrid", 3, 2, 1),
])
def test_shard_of(strategy, workers, shard_size, shard):
    assert shard_of(strategy, workers, shard_size) == shard


def test_memory_model_recovers_state_and_overheads():
    state, over_ddp, over_fsdp = 3 * GiB, 1 * GiB, int(1.2 * GiB)
    configs = [("ddp", 1, 1, 0), ("ddp", 2, 1, 0), ("fsdp", 2, 1, 0), ("fsdp", 4, 1, 0)]
    measured = synthetic(1e-3, 0, 0.9, {"ddp": 1e-4, "fsdp": 2e-4}, configs=configs,
                         state=state, overhead={"ddp": over_ddp, "fsdp": over_fsdp})
    memory = fit_memory(measured)
    assert memory.full_state == pytest.approx(state, rel=1e-6)
    assert memory.overhead["ddp"] == pytest.approx(over_ddp, rel=1e-6)
    assert memory.overhead["fsdp"] == pytest.approx(over_fsdp, rel=1e-6)
    assert memory.per_rank("ddp", 8) == pytest.approx(state + over_ddp, rel=1e-6)
    assert memory.per_rank("fsdp", 8) == pytest.approx(state / 8 + over_fsdp, rel=1e-6)
    # hybrid, not measured: its shard group's share, with the largest overhead seen
    assert memory.per_rank("hybrid", 8, 2) == pytest.approx(state / 2 + over_fsdp, rel=1e-6)


def test_memory_model_is_robust_to_one_noisy_probe():
    measured = one_machine() + [Measurement("ddp", 2, 1, 30_000, state_bytes=3_600_000,
                                            peak_rss=2 * GiB)]  # a spike from elsewhere
    memory = fit_memory(measured)
    assert memory.overhead["ddp"] < 500 * MiB


def test_measurement_from_a_training_report():
    report = SimpleNamespace(strategy="fsdp", world_size=2, samples_per_s=1234.0,
                             state_bytes=(100, 104), peak_rss=(5000, 5200))
    m = Measurement.from_report(report, threads=2)
    assert (m.strategy, m.workers, m.threads, m.samples_per_s) == ("fsdp", 2, 2, 1234.0)
    assert (m.state_bytes, m.peak_rss, m.shard) == (104, 5200, 2)
    assert Measurement.from_report(report, threads=1, samples_per_s=999.0).samples_per_s == 999


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"strategy": "zero"}, "Measurement.strategy"),
    ({"workers": 0}, "Measurement.workers"),
    ({"threads": 1.5}, "Measurement.threads"),
    ({"samples_per_s": 0.0}, "Measurement.samples_per_s"),
    ({"samples_per_s": float("nan")}, "Measurement.samples_per_s"),
])
def test_bad_measurements_are_refused(kwargs, says):
    args = {"strategy": "ddp", "workers": 1, "threads": 1, "samples_per_s": 10.0, **kwargs}
    with pytest.raises(ValueError, match=says):
        Measurement(**args)


def test_scaling_model_notes_extrapolation():
    model = fit_scaling_model(one_machine())
    assert model.extrapolation(2, 2) == ""
    assert model.extrapolation(4, 1) == "extrapolated beyond 2 workers"
    assert model.extrapolation(1, 4) == "extrapolated beyond 2 threads"
    assert model.extrapolation(1, 1, gpus=1) == "not measured"
    sps, memory = model.predict("fsdp", 2, 1)
    assert sps == pytest.approx(21_000, rel=0.01)
    assert memory == pytest.approx(440 * MiB, rel=0.01)


def test_gpu_communication_is_fitted_apart_from_the_cpu_workers():
    # NCCL between GPU workers costs far less than the CPU workers' all-reduce
    configs = [("ddp", 1, 1, 0), ("ddp", 2, 1, 0), ("ddp", 1, 2, 0), ("ddp", 1, 1, 1),
               ("ddp", 2, 1, 1), ("ddp", 4, 1, 1)]
    cpu = synthetic(1e-3, 1e-5, 0.8, {"ddp": 1e-4}, configs=configs[:3])
    gpu = synthetic(1e-3, 1e-5, 0.8, {"ddp": 1e-6}, configs=configs[3:], a_gpu=2e-5)
    model = fit_throughput(cpu + gpu)
    assert model.comm["ddp"] == pytest.approx(1e-4, rel=1e-3)
    assert model.comm_gpu["ddp"] == pytest.approx(1e-6, rel=1e-3)
    assert model.comm_of("ddp", gpus=1) == pytest.approx(1e-6, rel=1e-3)
    assert model.samples_per_s("ddp", 4, 1, gpus=1) == pytest.approx(
        1 / (2e-5 / 4 + 1e-5 + 2 * 1e-6), rel=1e-3)
    # one GPU worker measured: the CPU workers' cost stands in, and the plan says so
    one_gpu = fit_throughput(cpu + gpu[:1])
    assert one_gpu.comm_gpu == {} and one_gpu.comm_of("ddp", gpus=1) == one_gpu.comm["ddp"]
    assert any("one GPU worker measured" in n for n in one_gpu.notes)


def test_measurement_from_a_report_with_timings():
    report = SimpleNamespace(strategy="ddp", world_size=2, samples_per_s=1.0,
                             state_bytes=(1,), peak_rss=(2,))
    m = Measurement.from_report(report, threads=1, samples_per_s=5.0, fit_overhead_s=0.2,
                                epoch_overhead_s=0.01, send_bytes_per_s=1e9)
    assert (m.fit_overhead_s, m.epoch_overhead_s, m.send_bytes_per_s) == (0.2, 0.01, 1e9)
    assert m.timed and not Measurement("ddp", 1, 1, 5.0).timed


def test_the_scaling_model_predicts_a_whole_fit():
    measured = [Measurement("ddp", 1, 1, 1000.0, fit_overhead_s=1.0, epoch_overhead_s=0.1)]
    model = fit_scaling_model(measured)
    # 3 epochs of 2000 samples: 6 s of work, 1 s per fit, 0.3 s of epochs' ends
    assert model.fit_seconds("ddp", 1, epochs=3, n_samples=2000) == pytest.approx(7.3)
    assert model.predict("ddp", 1, epochs=3, n_samples=2000)[0] == pytest.approx(6000 / 7.3)
    assert model.predict("ddp", 1)[0] == pytest.approx(1000.0)
    assert model.gpu_threads == ()
