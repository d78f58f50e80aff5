"""GPU workers on one machine: resolving ``gpus=``, the pinned environments, the config
a GPU cluster starts with (scalekit.backends.gpus). No GPU needed: the machine's GPUs
are given as data, or faked where the module asks the machine."""

from __future__ import annotations

import pytest

from scalekit.backends import gpus as g
from scalekit.config import ClusterConfig
from scalekit.errors import ConfigError


@pytest.mark.parametrize(("requested", "visible", "expected"), [
    ("auto", ["0", "1", "2", "3"], ("0", "1", "2", "3")),
    ("auto", [], ()),
    (2, ["0", "1", "2", "3"], ("0", "1")),
    (1, ["3", "1"], ("3",)),  # the kernel's CUDA_VISIBLE_DEVICES order
    (("2", "0"), ["0", "1", "2"], ("2", "0")),
    (("GPU-aa",), ["GPU-aa", "GPU-bb"], ("GPU-aa",)),
])
def test_resolve_gpus(requested, visible, expected):
    assert g.resolve_gpus(requested, visible) == expected


@pytest.mark.parametrize(("requested", "visible", "says"), [
    (3, ["0"], "scalekit.cluster.gpus: got 3, expected at most 1 (this machine has 1 GPU: 0)"),
    (1, [], "at most 0 (this machine has no GPU visible to this process"),
    (("1",), ["0"], "There is no GPU 1 here"),
    (("0", "7"), ["0", "1"], "There is no GPU 7 here"),
])
def test_resolve_gpus_refuses_gpus_the_machine_lacks(requested, visible, says):
    with pytest.raises(ConfigError) as info:
        g.resolve_gpus(requested, visible)
    assert says in str(info.value)
    assert "gpus='auto'" in str(info.value)  # the fix


@pytest.mark.parametrize(("gpu", "gpus", "env"), [
    ("0", ("0",), "0"),
    ("0", ("0", "1", "2"), "0,1,2"),
    ("2", ("0", "1", "2"), "2,0,1"),  # its own GPU first (cuda:0 there), peers visible
    ("GPU-b", ("GPU-a", "GPU-b"), "GPU-b,GPU-a"),
])
def test_each_worker_sees_its_own_gpu_first(gpu, gpus, env):
    assert g.worker_env(gpu, gpus) == {"CUDA_VISIBLE_DEVICES": env}


@pytest.mark.parametrize(("threads", "n_gpus", "cores", "expected"), [
    (1, 1, 16, 16), (1, 8, 16, 2), (1, 4, 2, 1), (4, 8, 16, 4), (1, 3, 16, 5),
])
def test_gpu_workers_get_a_fair_share_of_the_cores(threads, n_gpus, cores, expected):
    assert g.gpu_threads(threads, n_gpus, cores) == expected


def test_gpu_cluster_config_starts_one_worker_per_gpu_and_stops_scaling_there():
    config, notice = g.gpu_cluster_config(ClusterConfig(gpus="auto"), ["0", "1", "2", "3"])
    assert notice == ""
    assert config.gpus == ("0", "1", "2", "3")
    assert config.workers == 4 and config.max_workers == 4
    with pytest.raises(ConfigError, match=r"an integer in 1\.\.4"):
        config.check_workers(5)  # scale, the slider and adapt stop at the GPUs


def test_explicit_workers_and_max_workers_win_within_the_gpus():
    config, _ = g.gpu_cluster_config(ClusterConfig(gpus=4), list("0123"), workers=1)
    assert (config.workers, config.max_workers) == (1, 4)  # room to scale up to 4
    config, _ = g.gpu_cluster_config(ClusterConfig(gpus=4), list("0123"), max_workers=2)
    assert (config.workers, config.max_workers) == (2, 2)
    with pytest.raises(ConfigError) as info:
        g.gpu_cluster_config(ClusterConfig(gpus="auto"), ["0"], workers=2)
    assert "scalekit.cluster.workers: got 2, expected at most 1 with gpus='auto'" in str(
        info.value)


def test_auto_on_a_machine_without_gpus_starts_cpu_workers_and_says_so():
    config, notice = g.gpu_cluster_config(ClusterConfig(gpus="auto", workers=3), [])
    assert config.gpus is None and config.workers == 3
    assert "no GPU visible" in notice and "starting 3 CPU workers" in notice


@pytest.mark.parametrize(("env", "count", "expected"), [
    (None, 2, ["0", "1"]),
    (None, 0, []),
    ("1,0", 2, ["1", "0"]),
    ("1", 1, ["1"]),
    ("", 4, []),
    ("-1", 4, []),  # CUDA's way of hiding every GPU
    ("0,-1,1", 4, ["0"]),  # CUDA stops at the first invalid entry
    ("0,1,2", 1, ["0"]),  # entries naming GPUs that are not there do not count
    ("GPU-aa,GPU-bb", 2, ["GPU-aa", "GPU-bb"]),
])
def test_visible_gpus_follows_cuda_visible_devices(monkeypatch, env, count, expected):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    monkeypatch.setattr(g, "_device_count", lambda: count)
    assert g.visible_gpus() == expected


def test_visible_gpus_on_this_machine_is_a_list_of_ids():
    assert all(isinstance(i, str) for i in g.visible_gpus())  # no GPU here: []


# -- the gpus setting ------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (None, None), ("none", None), ("null", None), (0, None), ("0", None), (False, None),
    ("auto", "auto"), ("AUTO", "auto"), (2, 2), ("2", 2), ([0, 1], ("0", "1")),
    ((3,), ("3",)), ("0,2", ("0", "2")), ("[0, 2]", ("0", "2")),
    (["GPU-aa"], ("GPU-aa",)),
])
def test_gpus_setting_spellings(given, expected):
    assert ClusterConfig(gpus=given).gpus == expected


@pytest.mark.parametrize(("given", "says"), [
    (-1, "a number of GPUs >= 1"), (1.5, "a number of GPUs >= 1"), (True, "a number"),
    ([0, 0], "list every GPU once"), ([], "a list of GPU ids"), (["-1"], "a list"),
    ([0.5], "a list"), ({"a": 1}, "a list"),
])
def test_bad_gpus_settings_name_the_field(given, says):
    with pytest.raises(ConfigError) as info:
        ClusterConfig(gpus=given)
    assert str(info.value).startswith("scalekit.cluster.gpus: got ")
    assert says in str(info.value)


def test_gpus_on_kubernetes_points_to_pod_resources():
    with pytest.raises(ConfigError) as info:
        ClusterConfig(backend="kubernetes", gpus=1)
    assert "{'resources': {'limits': {'gpu': 1}}}" in str(info.value)


def test_gpus_from_the_environment(monkeypatch):
    import dask.config

    monkeypatch.setenv("DASK_SCALEKIT__CLUSTER__GPUS", "auto")
    dask.config.refresh()
    try:
        assert ClusterConfig.from_config().gpus == "auto"
    finally:
        monkeypatch.delenv("DASK_SCALEKIT__CLUSTER__GPUS")
        dask.config.refresh()
