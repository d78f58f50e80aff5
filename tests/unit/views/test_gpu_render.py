"""GPUs in the cluster's text and HTML: only for GPU workers, a hint without NVML."""

from __future__ import annotations

import re

from scalekit.events import ClusterSnapshot, WorkerStats
from scalekit.views import cluster_render, gpu_render
from scalekit.views.html import WARN_COLOR

GIB = 2**30


def _cpu(i: int) -> WorkerStats:
    return WorkerStats(name=f"cpu{i}", address=f"tcp://127.0.0.1:{4100 + i}", nthreads=2,
                       cpu=50.0, memory=GIB, memory_limit=4 * GIB)


def _gpu(i: int, **kw: object) -> WorkerStats:
    values: dict[str, object] = dict(
        name=f"gpu{i}", address=f"tcp://127.0.0.1:{4000 + i}", nthreads=4, cpu=100.0,
        memory=2 * GIB, memory_limit=16 * GIB, gpus=1.0, gpu_name="NVIDIA H200",
        gpu_utilization=37.0, gpu_memory=14 * GIB, gpu_memory_total=140 * GIB,
    )
    values.update(kw)
    return WorkerStats(**values)  # type: ignore[arg-type]


def _blind(i: int) -> WorkerStats:
    """A GPU worker without nvidia-ml-py: only its ``GPU`` resource is known."""
    return WorkerStats(name=f"gpu{i}", address=f"tcp://127.0.0.1:{4000 + i}", nthreads=4,
                       gpus=1.0)


def _snap(*workers: WorkerStats) -> ClusterSnapshot:
    return ClusterSnapshot(backend="local", status="running", workers=workers)


def test_gpu_column_and_lines_only_when_a_worker_has_a_gpu() -> None:
    cpu_only = _snap(_cpu(0), _cpu(1))
    html, text = cluster_render.cluster_html(cpu_only), cluster_render.cluster_text(cpu_only)
    assert "GPU" not in html and "GPU" not in text  # CPU-only clusters look as before
    assert re.findall(r"<th[^>]*>([^<]*)</th>", html) == ["worker", "threads", "CPU", "memory"]
    assert text.count("\n") == 4  # header, summary, totals, one line per worker
    mixed = _snap(_cpu(0), _cpu(1), _blind(2))
    html, text = cluster_render.cluster_html(mixed), cluster_render.cluster_text(mixed)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", html)[-1] == "GPU"
    assert text.count("\n") == 6  # + the GPU totals line and the GPU worker's line


def test_gpu_workers_get_a_column_with_utilisation_and_memory_bars() -> None:
    s = _snap(_gpu(0), _gpu(1, gpu_utilization=80.0, gpu_memory=130 * GIB), _cpu(0))
    html = cluster_render.workers_html(s)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", html)[-1] == "GPU"
    rows = html.split('class="scalekit-worker"')[1:]
    assert [row.count("<td") for row in rows] == [5, 5, 5]
    assert rows[0].count('class="scalekit-bar"') == 4  # CPU, memory, GPU, GPU memory
    assert "37 %" in rows[0] and "14.00 / 140.00 GiB" in rows[0]
    assert 'title="NVIDIA H200 · GPU=1"' in rows[0]
    assert '<span class="scalekit-gpu-tag" style="font-size:0.8em">GPU=1</span>' in rows[0]
    assert WARN_COLOR in rows[1]  # 130 of 140 GiB: nearly full
    assert 'class="scalekit-no-gpu"' in rows[2]  # the CPU worker of a mixed cluster


def test_gpu_text_lines_and_totals() -> None:
    s = _snap(_gpu(0), _gpu(1, gpu_utilization=43.0, gpu_memory=6 * GIB), _cpu(0))
    lines = cluster_render.cluster_text(s).splitlines()
    assert lines[3] == "  2 GPU workers · GPU 40 % (mean) · GPU memory 20.00 / 280.00 GiB"
    gpu0 = next(line for line in lines if line.lstrip().startswith("gpu0"))
    assert "GPU 37 %  GPU memory 14.00 / 140.00 GiB  [NVIDIA H200 · GPU=1]" in gpu0
    assert gpu0.endswith("tcp://127.0.0.1:4000")
    cpu0 = next(line for line in lines if line.lstrip().startswith("cpu0"))
    assert "GPU" not in cpu0
    assert "· 2 GPU workers · GPU 40 % (mean)" in cluster_render.totals_html(s)


def test_gpu_workers_without_nvidia_ml_py_show_the_resource_and_the_hint() -> None:
    s = _snap(_blind(0), _blind(1))
    html, text = cluster_render.workers_html(s), cluster_render.cluster_text(s)
    assert html.count('class="scalekit-gpu scalekit-gpu-hint"') == 2
    assert "GPU=1 · <em>utilisation needs nvidia-ml-py</em>" in html
    assert "pip install &#x27;scalekit[gpu]&#x27;" in html  # the tooltip says how
    assert "GPU=1 (utilisation needs nvidia-ml-py)" in text
    assert "2 GPU workers (utilisation needs nvidia-ml-py)" in cluster_render.totals_html(s)


def test_unknown_values_and_an_unnamed_gpu() -> None:
    w = _gpu(0, gpus=0.0, gpu_name="", gpu_utilization=None, gpu_memory_total=None)
    assert gpu_render.gpu_label(w) == "GPU"
    assert gpu_render.gpu_text(w) == "GPU –  GPU memory 14.00 GiB"
    assert gpu_render.gpu_text(_cpu(0)) == ""
    assert gpu_render.gpu_totals_text(_snap(_cpu(0))) == ""


def test_gpu_names_are_escaped() -> None:
    html = cluster_render.workers_html(_snap(_gpu(0, gpu_name='<b>"x"</b>')))
    assert "<b>" not in html and "&lt;b&gt;&quot;x&quot;" in html
