"""``%scalekit down`` deletes the kubernetes cluster it names, also one started with
``--keep``: keep-on-shutdown only spares a cluster when the kernel shuts down (or the
session closes), not when the user asks for it to go."""

from __future__ import annotations

import dask.config
import pytest
from kube_support import IMAGE

from scalekit.magics import ScalekitMagics, parse
from scalekit.session import cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def cluster_names(kube) -> list[str]:
    return [c["metadata"]["name"] for c in kube.dask("daskclusters")]


def test_down_deletes_a_cluster_started_with_keep(notebook, capsys):
    kube = notebook
    magics = ScalekitMagics(None, display=lambda obj: None)
    magics.execute(parse(f"up --backend kubernetes --image {IMAGE} --workers 1 --keep "
                         "--no-panel"))
    session = magics.session
    try:
        backend = session.backend
        assert backend.kube.keep_on_shutdown
        name = backend.cluster_name
        assert cluster_names(kube) == [name]
        capsys.readouterr()

        magics.execute(parse("down"))

        assert f"cluster scalekit/{name} deleted" in capsys.readouterr().out
        assert session.closed and magics.session is None and backend.deleted
        # deleted, and down waited for the pods (close-timeout) before it returned
        assert not cluster_names(kube)
        assert not kube.pods()
    finally:
        magics.close_all()  # a failed assertion must not leave the cluster running
        if cluster_names(kube):
            session.backend.delete()


def test_delete_after_a_kept_close_deletes_the_kept_cluster(notebook):
    kube = notebook
    with dask.config.set({"scalekit.kubernetes.keep-on-shutdown": True}):
        session = cluster(workers=1, backend="kubernetes")
    backend = session.backend
    try:
        session.close()  # kept: what a kernel shutdown does with --keep
        assert cluster_names(kube) == [backend.cluster_name] and not backend.deleted
        assert kube.wait_for(lambda: kube.pods("dask.org/component=worker"), 60,
                             "the kept worker pod")
    finally:
        backend.delete()  # on a closed backend: a loop of its own, then the deletion
    assert backend.deleted
    assert not cluster_names(kube) and not kube.pods()
    backend.delete()  # idempotent
