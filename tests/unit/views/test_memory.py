"""Memory against the machine: the real total, and a warning when limits overcommit it."""

from __future__ import annotations

from scalekit.events import ClusterSnapshot, WorkerStats
from scalekit.views import cluster_render
from scalekit.views.cluster_state import ClusterState
from scalekit.views.lab_text import cluster_view
from scalekit.views.memory import local_machine_memory, memory_view

GIB = 2**30
MACHINE = int(23.54 * GIB)


def _cluster(n: int, limit: int, host: str = "127.0.0.1") -> ClusterSnapshot:
    """``n`` workers that each got ``limit`` bytes (Dask's "auto" for the first ones)."""
    workers = tuple(WorkerStats(name=f"w{i}", address=f"tcp://{host}:{4000 + i}", nthreads=1,
                                memory=GIB // 16, memory_limit=limit) for i in range(n))
    return ClusterSnapshot(backend="local", status="running", workers=workers, requested=n)


def test_four_workers_with_half_the_machine_each_are_flagged() -> None:
    """The issue's panel: "0.25 / 47.08 GiB" on a 23.5 GiB machine."""
    snap = _cluster(4, MACHINE // 2)
    view = memory_view(snap, MACHINE)
    assert view.overcommit is not None and round(view.overcommit, 1) == 2.0
    assert view.text == "0.25 / 23.54 GiB (this machine; limits 47.08 GiB)"
    assert view.short == "0.2/23.5 GiB"
    assert view.warning.startswith("memory limits add up to 47.08 GiB, 2.0× this machine's "
                                   "23.54 GiB: a worker may be killed before Dask spills")
    # a size that fits: 23.54 / 4 rounded down to half a GiB, both ways to give it
    assert view.warning.endswith("Give each at most 5.5GiB: sk.cluster(memory_limit='5.5GiB')"
                                 " or %scalekit up --memory-limit 5.5GiB")
    html = cluster_render.cluster_html(snap, MACHINE)
    assert 'class="scalekit-memory-warning"' in html and "2.0× this machine" in html
    assert "warning: memory limits add up to" in cluster_render.cluster_text(snap, MACHINE)


def test_limits_within_the_machine_are_shown_as_before() -> None:
    view = memory_view(_cluster(2, MACHINE // 2), MACHINE)
    assert view.warning is None and view.text == "0.12 / 23.54 GiB"
    unknown = memory_view(_cluster(4, MACHINE // 2), None)
    assert unknown.warning is None and unknown.text == "0.25 / 47.08 GiB"
    assert memory_view(_cluster(1, 0), MACHINE).text == "0.06 / 23.54 GiB (this machine; no limit)"


def test_the_machine_is_known_only_for_workers_on_this_machine() -> None:
    def read() -> int:
        return MACHINE

    assert local_machine_memory(_cluster(2, GIB), read) == MACHINE
    assert local_machine_memory(_cluster(2, GIB, host="10.0.0.7"), read) is None
    pods = ClusterSnapshot(backend="kubernetes", status="running", workers=())
    assert local_machine_memory(pods, read) is None


def test_the_sidebar_gets_the_same_figures_and_the_warning() -> None:
    view = cluster_view(ClusterState(snapshot=_cluster(4, MACHINE // 2)), MACHINE)
    assert view["status_bar"] == "4 workers · CPU 0% · mem 0.2/23.5 GiB"
    assert "memory 0.25 / 23.54 GiB (this machine; limits 47.08 GiB)" in view["summary"]
    assert view["memory_warning"] == memory_view(_cluster(4, MACHINE // 2), MACHINE).warning
