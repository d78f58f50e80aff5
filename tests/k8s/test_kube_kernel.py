"""``%scalekit up --backend kubernetes`` in a real kernel: the cluster goes away when the
kernel shuts down, unless it was started with ``--keep``."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest
from kube_support import IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CODE = textwrap.dedent(
    """
    %load_ext scalekit
    %scalekit up --backend kubernetes --image {image} --workers 1 --no-panel {keep}
    from scalekit.magics import _registered
    print("cluster:", _registered(get_ipython()).session.backend.cluster_name)
    """
)


def run_in_kernel(tmp_path, env: dict[str, str], code: str) -> str:
    jupyter_client = pytest.importorskip("jupyter_client")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.kernel_spec.argv[0] = sys.executable  # this venv's interpreter
    km.start_kernel(cwd=str(tmp_path), env=env)
    kc = km.client()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=120)

        def collect(msg) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("ERROR " + "\n".join(msg["content"]["traceback"]))

        reply = kc.execute_interactive(code, timeout=240, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(out)
    finally:
        kc.stop_channels()
        # what Jupyter does on "Shut down kernel": shutdown_request, then SIGTERM if needed
        km.request_shutdown()
        km.finish_shutdown()
        km.cleanup_resources()
    return "".join(out)


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept"])
def test_kernel_shutdown_deletes_the_cluster_unless_kept(notebook, tmp_path, keep):
    kube = notebook
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_SCALEKIT__")}
    env.update(KUBECONFIG=str(kube.kubeconfig), DASK_SCALEKIT__KUBERNETES__START_TIMEOUT="240")
    output = run_in_kernel(tmp_path, env, CODE.format(image=IMAGE,
                                                      keep="--keep" if keep else ""))
    name = output.split("cluster:", 1)[1].split()[0]
    try:
        if keep:
            time.sleep(3)  # whatever shutdown would have done, it has done by now
            assert [c["metadata"]["name"] for c in kube.dask("daskclusters")] == [name]
            assert any(p["status"].get("phase") == "Running" for p in kube.pods())
        else:
            assert kube.wait_for(lambda: not kube.dask("daskclusters"), 30,
                                 "the DaskCluster to be deleted")
    finally:
        if kube.dask("daskclusters"):
            kube.call(lambda: kube.store.delete(
                kube.store.kind("kubernetes.dask.org", "v1", "daskclusters"), "scalekit",
                name))
