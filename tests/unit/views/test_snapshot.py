"""The JupyterLab snapshots: pure JSON from the folded cluster and training views."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scalekit.events import (
    AdaptChanged,
    BatchProgress,
    ClusterSnapshot,
    EpochEnded,
    Recovered,
    ScaleRequested,
    TrainingReport,
    WorkerStats,
)
from scalekit.views.snapshot import cluster_dict, run_dict
from scalekit.views.training_state import TrainingState

from .snapshot_events import GIB, cluster_snapshot, run_events


def test_cluster_dict_has_workers_totals_and_links() -> None:
    snap = cluster_snapshot(3)
    d = cluster_dict(snap, cluster_id="c1", max_workers=8)
    json.dumps(d, allow_nan=False)
    assert d["backend"] == "local" and d["status"] == "running"
    assert d["n_workers"] == 3 and [w["name"] for w in d["workers"]] == ["w0", "w1", "w2"]
    view = d["workers"][0].pop("view")
    assert d["workers"][0] == {"name": "w0", "address": "tcp://127.0.0.1:4000", "nthreads": 1,
                               "cpu": 50.0, "memory": GIB // 2, "memory_limit": 2 * GIB,
                               "status": "running"}
    assert view == {"title": "tcp://127.0.0.1:4000 · 1 thread", "gpu": None,
                    "cpu": {"fraction": 0.5, "label": "50 %", "warn": False},
                    "memory": {"fraction": 0.25, "label": "0.50 / 2.00 GiB", "warn": False}}
    assert d["totals"] == {"threads": 3, "cpu": 50.0, "cpu_percent": 50.0,
                           "memory": 3 * GIB // 2, "memory_limit": 6 * GIB}
    assert d["dashboard_link"] == "http://127.0.0.1:8787/status"
    assert d["adaptive"] is None and d["max_workers"] == 8 and d["notice"] is None


def test_cluster_dict_caps_workers_but_totals_count_all() -> None:
    snap = cluster_snapshot(10)
    d = cluster_dict(snap, cluster_id="c1", max_shown=4)
    assert len(d["workers"]) == 4 and d["n_workers"] == 10 and d["totals"]["threads"] == 10


def test_newer_intents_override_the_last_sample() -> None:
    snap = cluster_snapshot(2)
    on = AdaptChanged(minimum=1, maximum=6, time=snap.time + 1)
    scale = ScaleRequested(n=5, time=snap.time + 1)
    d = cluster_dict(snap, cluster_id="c1", adapt=on, scale=scale)
    assert d["adaptive"] == {"minimum": 1, "maximum": 6} and d["requested"] == 5
    old_off = AdaptChanged(time=snap.time - 1)  # older than the sample: the sample wins
    d = cluster_dict(cluster_snapshot(2, adaptive=(2, 3), time=old_off.time + 1),
                     cluster_id="c1", adapt=old_off)
    assert d["adaptive"] == {"minimum": 2, "maximum": 3}


def test_run_dict_from_the_panels_training_state() -> None:
    state = TrainingState.from_events(run_events(epochs=2, max_epochs=5))
    state.apply(BatchProgress(run_id="run-1", epoch=2, batch=5, n_batches=10,
                              samples_per_s=300.0))
    state.apply(Recovered(run_id="run-1", reason="rank 1 lost", epoch=2, step=0,
                          world_size=1, lost_steps=3, downtime_s=2.5))
    d = run_dict(state)
    json.dumps(d, allow_nan=False)
    assert d["run_id"] == "run-1" and d["status"] == "running"
    assert (d["epochs_done"], d["max_epochs"]) == (2, 5)
    assert d["loss_key"] == "train_loss" and d["loss"] == pytest.approx(0.5)
    assert d["valid_loss"] == pytest.approx(1.0)
    assert d["progress"] == pytest.approx(2 / 5)  # the recovery dropped the batch progress
    assert d["last_checkpoint"]["epoch"] == 2
    assert d["last_checkpoint"]["url"] == "file:///ckpt/run-1/epoch-2"
    assert (d["recoveries"], d["lost_steps"], d["downtime_s"]) == (1, 3, 2.5)
    assert d["world_size"] == 1


def test_run_dict_progress_inside_an_epoch_and_when_finished() -> None:
    state = TrainingState.from_events(run_events(epochs=1, max_epochs=4))
    state.apply(BatchProgress(run_id="run-1", epoch=1, batch=5, n_batches=10,
                              samples_per_s=300.0))
    assert run_dict(state)["progress"] == pytest.approx(1.5 / 4)
    assert run_dict(state)["batch"] == [1, 5, 10]
    done = TrainingState.from_events(run_events(epochs=4, max_epochs=4, finished=True))
    d = run_dict(done)
    assert d["status"] == "finished" and d["progress"] == 1.0 and d["eta_s"] is None


def test_run_dict_keeps_json_strict_with_nan_losses() -> None:
    events = run_events(epochs=0)
    events.append(EpochEnded(run_id="run-1", epoch=1, world_size=2,
                             row={"train_loss": float("nan"), "dur": 1.0}))
    d = run_dict(TrainingState.from_events(events))
    json.dumps(d, allow_nan=False)
    assert d["loss"] is None


def _nvml_entry(name: str, *, gpu: bool, nvml: bool) -> dict[str, Any]:
    """A ``scheduler_info()`` worker entry as distributed builds it (the full shape and
    where each key comes from: tests/unit/backends/test_metrics.py::nvml_worker)."""
    metrics: dict[str, Any] = {"cpu": 90.0, "memory": GIB, "num_fds": 30}
    if nvml:  # SystemMonitor's flat keys, copied by Worker.get_metrics
        metrics.update({"gpu-memory-total": 80 * GIB, "gpu_utilization": 61,
                        "gpu_memory_used": 20 * GIB})
    return {"type": "Worker", "id": name, "name": name, "host": "127.0.0.1", "nthreads": 4,
            "resources": {"GPU": 1} if gpu else {}, "memory_limit": 8 * GIB,
            "status": "running", "metrics": metrics}


def test_gpu_workers_in_the_payload_from_scheduler_info() -> None:
    from scalekit.backends.metrics import snapshot_from_info

    info = {"address": "tcp://127.0.0.1:8786", "workers": {
        "tcp://127.0.0.1:4000": _nvml_entry("g0", gpu=True, nvml=True),
        "tcp://127.0.0.1:4001": _nvml_entry("g1", gpu=True, nvml=False),  # no pynvml
        "tcp://127.0.0.1:4002": _nvml_entry("c0", gpu=False, nvml=False),
    }}
    d = cluster_dict(snapshot_from_info(info, backend="local"), cluster_id="c1")
    json.dumps(d, allow_nan=False)
    c0, g0, g1 = d["workers"]
    assert g0["gpu"] == {"name": "", "resource": 1.0, "monitored": True, "utilization": 61.0,
                         "memory": 20 * GIB, "memory_total": 80 * GIB}
    assert g1["gpu"] == {"name": "", "resource": 1.0, "monitored": False,
                         "utilization": None, "memory": None, "memory_total": None}
    assert "gpu" not in c0  # CPU workers are sent as before
    assert d["totals"]["gpu"] == {"workers": 2, "monitored": True, "utilization": 61.0,
                                  "memory": 20 * GIB, "memory_total": 80 * GIB}


def test_cpu_only_payload_has_no_gpu_keys_and_gpu_totals_count_every_worker() -> None:
    cpu = cluster_dict(cluster_snapshot(2), cluster_id="c1")
    assert "gpu" not in cpu["totals"] and all("gpu" not in w for w in cpu["workers"])
    workers = tuple(WorkerStats(name=f"w{i}", address=f"tcp://h:{i}", nthreads=1, gpus=1.0,
                                gpu_utilization=10.0 * i) for i in range(10))
    snap = ClusterSnapshot(backend="local", status="running", workers=workers)
    d = cluster_dict(snap, cluster_id="c1", max_shown=4)
    assert len(d["workers"]) == 4 and d["totals"]["gpu"]["workers"] == 10
    assert d["totals"]["gpu"]["utilization"] == pytest.approx(45.0)


def test_run_dict_has_the_reports_peak_gpu_memory() -> None:
    state = TrainingState.from_events(run_events(epochs=2, max_epochs=2))
    assert run_dict(state)["peak_gpu_memory"] == []
    state.apply(TrainingReport(run_id="run-1", strategy="ddp", world_size=2,
                               samples_per_s=1.0, peak_gpu_memory=(2**30, 2 * 2**30)))
    assert run_dict(state)["peak_gpu_memory"] == [2**30, 2 * 2**30]
