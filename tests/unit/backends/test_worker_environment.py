"""One training worker environment for every backend: a local worker process (the
TrainingNanny's env) and a worker pod (its container env and nanny preload) get the same
thread variables, no MALLOC_TRIM_THRESHOLD_, and the same Dask settings."""

from __future__ import annotations

import dask.config
import pytest

from scalekit.backends.kube_spec import build_cluster_spec
from scalekit.backends.worker_environment import (
    THREAD_VARS,
    process_env,
    worker_dask_config,
    worker_dask_env,
    worker_settings,
)
from scalekit.config import ClusterConfig, KubernetesConfig

pytestmark = pytest.mark.usefixtures("clean_dask_config")

STOCK = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MY_VAR": "x"}


def normalised(config: dict) -> dict:
    """Dask treats ``-`` and ``_`` in keys alike; env variables can only spell ``_``."""
    return {k.replace("-", "_"): normalised(v) if isinstance(v, dict) else v
            for k, v in config.items()}


def test_a_worker_process_gets_its_thread_count_and_no_malloc_trim():
    env = process_env(STOCK, 3)
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["MY_VAR"] == "x"
    assert {var: env[var] for var in THREAD_VARS} == dict.fromkeys(THREAD_VARS, "3")
    assert STOCK["OMP_NUM_THREADS"] == "1"  # the nanny's own mapping is left alone


def test_thread_variables_set_for_a_pod_win_and_a_gpu_worker_sees_its_gpu_first():
    env = process_env(STOCK, 2, given={"OMP_NUM_THREADS": "4", "PATH": "/bin"},
                      gpu="1", gpus=("0", "1", "2"))
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("4", "2")
    assert "PATH" not in env  # only thread variables are taken from outside
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2,0"


@pytest.mark.parametrize("profile", [False, True])
def test_pods_get_the_dask_settings_of_local_workers(profile):
    kube = KubernetesConfig(image="ghcr.io/x/y:1", tls=False)
    spec = build_cluster_spec(kube, ClusterConfig(threads_per_worker=2, profile=profile), "c")
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    dask_env = {k: v for k, v in env.items() if k.startswith("DASK_DISTRIBUTED__")}
    assert dask_env == worker_dask_env(profile)
    # what a pod's Dask reads from those variables is what a local nanny is given
    assert normalised(dask.config.collect_env(dask_env)) == normalised(
        worker_dask_config(profile))
    assert {var: env[var] for var in THREAD_VARS} == dict.fromkeys(THREAD_VARS, "2")
    assert "distributed.admin.tick.interval" in worker_settings(profile)
    assert ("distributed.worker.profile.enabled" in worker_settings(profile)) is not profile
