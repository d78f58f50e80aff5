"""A detached fit on a kept Kubernetes cluster (the emulated one): it goes on after the
client process that started it exits, and a new client reconnects to the cluster by
name and attaches to the run (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kube_support import IMAGE, assert_nothing_left

import scalekit as sk
from scalekit.session import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

HERE = Path(__file__).parent
NAME = "detached-fit"

CLIENT = """
import json, sys
import dask.config
import scalekit as sk
from kube_models import detached_net_and_data

if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    with dask.config.set(settings):
        session = sk.cluster(workers=2, backend="kubernetes",
                             kubernetes={"name": sys.argv[2], "keep_on_shutdown": True})
        session.wait_for_workers(2, timeout=120)
        net, X, y = detached_net_and_data()
        run = sk.fit(net, X, y, cluster=session, detach=True, show=False,
                     checkpoint=sys.argv[3])
        print("RUN", run.run_id, flush=True)
    # the process exits here: the kept cluster stays, and the fit with it
"""


def test_a_detached_fit_goes_on_after_its_client_exits(kube, tmp_path):
    settings = {"scalekit.kubernetes.image": IMAGE,
                "scalekit.kubernetes.start-timeout": "240s"}
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                       os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    done = subprocess.run([sys.executable, str(script), json.dumps(settings), NAME,
                           str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    run_id = next(line.split()[1] for line in done.stdout.splitlines()
                  if line.startswith("RUN "))

    import dask.config

    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    try:
        with dask.config.set(settings):
            session = cluster(backend="kubernetes",
                              kubernetes={"name": NAME, "keep_on_shutdown": True})
        try:
            assert run_id in {r["run_id"] for r in sk.runs(session)}
            run = sk.attach(run_id, cluster=session)
            net = run.wait(timeout=300)
            assert run.status == "finished" and len(net.history) == 6
            from kube_models import detached_net_and_data

            _, X, y = detached_net_and_data()
            assert net.score(X, y) > 0.9
        finally:
            session.backend.delete()  # what `%scalekit down` does to a kept cluster
            session.close()
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
    assert_nothing_left(kube)
