"""An emulated Kubernetes cluster with the real dask-kubernetes operator.

::

    with EmulatedCluster(tmp_path) as kube:
        os.environ["KUBECONFIG"] = str(kube.kubeconfig)
        ...  # KubeCluster, kr8s, kubectl-free tests
        kube.pods("scalekit")        # pods as the API server has them

The API server and the node (kubelet, Deployment controller, DNS) run on one
event-loop thread in this process; the operator runs as
``kopf run -m dask_kubernetes.operator.controller --standalone --namespace NS``
in a child process, as it would in its own pod.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .apiserver import ApiServer, Fault
from .kubelet import PODENV, Image, ImageTable, Node, Timing
from .store import CRD_KIND, Store

T = TypeVar("T")

CRD_DIR = Path(__import__("dask_kubernetes").__file__).parent / (
    "operator/deployment/helm/dask-kubernetes-operator/crds")


def crd_manifests() -> list[dict]:
    """The operator's CRDs as its Helm chart installs them."""
    return [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]


class EmulatedCluster:
    """Start with :meth:`start` (or ``with``); :meth:`stop` leaves no process behind.

    Parameters
    ----------
    workdir : Path
        Kubeconfig, hosts file, pod working directories and logs go here.
    namespace : str
        Created at start; the operator watches it.
    crds, operator : bool
        Install the operator's CRDs / run the operator (off: to test their absence).
    pythonpath : tuple of str
        Extra import paths of the default "image" (e.g. test model modules).
    """

    def __init__(self, workdir: Path, *, namespace: str = "scalekit", crds: bool = True,
                 operator: bool = True, pythonpath: tuple[str, ...] = (),
                 timing: Timing | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        self.namespace = namespace
        self.with_crds, self.with_operator = crds, operator
        self.images = ImageTable(default_pythonpath=pythonpath)
        self.timing = timing or Timing()
        self.store = Store()
        self.server = ApiServer(self.store, self._logs)
        self.node: Node | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="emulated-k8s",
                                        daemon=True)
        self.operator: subprocess.Popen | None = None
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.operator_log = self.workdir / "operator.log"
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` on the cluster's loop thread and return its result."""
        async def wrapper() -> T:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def start(self) -> EmulatedCluster:
        atexit.register(self.stop)  # pods run in sessions of their own: never orphan them
        self._thread.start()
        self.port = self.call(self.server.start)
        self.node = Node(self.store, self.workdir, self.images, self.port, self.timing)
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
            "clusters": [{"name": "emulated",
                          "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "notebook", "user": {"token": "emulated-token"}}],
            "contexts": [{"name": "emulated", "context": {
                "cluster": "emulated", "user": "notebook", "namespace": self.namespace}}],
        }))
        self.call(self._bootstrap)
        if self.with_operator:
            self.start_operator()
        return self

    def _bootstrap(self) -> None:
        namespaces = self.store.kind("", "v1", "namespaces")
        for name in sorted({"default", "kube-system", self.namespace}):
            self.store.create(namespaces, None, {"metadata": {"name": name}})
        self.store.create(self.store.kind("", "v1", "nodes"), None, {
            "metadata": {"name": "emulated-node", "labels": {
                "kubernetes.io/hostname": "emulated-node"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "capacity": {"cpu": str(os.cpu_count() or 1)}}})
        if self.with_crds:
            for crd in crd_manifests():
                self.server.register_crd(self.store.create(CRD_KIND, None, crd))

    def start_operator(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KUBERNETES_", "DASK_", "SCALEKIT_"))}
        env.update(KUBECONFIG=str(self.kubeconfig), PYTHONPATH=str(PODENV),
                   SCALEKIT_K8S_HOSTS=str(self.node.hosts_file) if self.node else "",
                   PYTHONUNBUFFERED="1")
        log = open(self.operator_log, "ab")  # noqa: SIM115
        try:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m",
                 "dask_kubernetes.operator.controller", "--standalone",
                 "--namespace", self.namespace],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        kinds = {"daskclusters", "daskworkergroups", "daskautoscalers", "pods", "services"}
        if not self.with_crds:
            kinds = {"pods", "services"}
        deadline = time.monotonic() + timeout
        while not kinds <= self.call(self._watched):
            if self.operator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start:\n{self.operator_output()}")
            time.sleep(0.2)

    def _watched(self) -> set[str]:
        return {w.kind.plural for w in self.store.watches}

    def operator_output(self, lines: int = 40) -> str:
        if not self.operator_log.exists():
            return ""
        return "\n".join(self.operator_log.read_text(errors="replace").splitlines()[-lines:])

    def stop_operator(self) -> None:
        proc, self.operator = self.operator, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        """Stop the operator, every pod process and the API server."""
        atexit.unregister(self.stop)
        self.stop_operator()
        if self._thread.is_alive():
            if self.node is not None:
                with contextlib.suppress(Exception):
                    self.call(self.node.shutdown, timeout=self.timing.max_grace + 10)
            with contextlib.suppress(Exception):
                self.call(self.server.stop, timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment for a client outside the cluster (the notebook)."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def objects(self, plural: str, namespace: str | None = None, labels: str | None = None,
                group: str = "", version: str = "v1") -> list[dict]:
        def read() -> list[dict]:
            kind = self.store.kinds.get((group, version, plural))
            return [] if kind is None else copy.deepcopy(
                self.store.list(kind, namespace or self.namespace, labels))
        return self.call(read)

    def pods(self, labels: str | None = None, namespace: str | None = None) -> list[dict]:
        return self.objects("pods", namespace, labels)

    def dask(self, plural: str, labels: str | None = None) -> list[dict]:
        return self.objects(plural, None, labels, "kubernetes.dask.org", "v1")

    def delete_pod(self, name: str, grace: int | None = None) -> None:
        self.call(lambda: self.store.delete(self.store.kind("", "v1", "pods"),
                                            self.namespace, name, grace))

    def processes(self) -> list[int]:
        """PIDs of pod containers still running."""
        def read() -> list[int]:
            assert self.node is not None
            return [r.proc.pid for r in self.node.runners.values()
                    if r.proc is not None and r.proc.poll() is None]
        return self.call(read)

    def add_image(self, name: str, image: Image) -> None:
        self.images.add(name, image)

    def fault(self, fault: Fault) -> Fault:
        self.call(self.server.faults.append, fault)
        return fault

    def clear_faults(self) -> None:
        self.call(self.server.faults.clear)

    @contextlib.contextmanager
    def in_cluster_dns(self) -> Iterator[None]:
        """Resolve service names in this process too, as a notebook pod would."""
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "scalekit_k8s_dns", PODENV / "sitecustomize.py")
        assert spec is not None and spec.loader is not None and self.node is not None
        hook = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hook)
        os.environ["SCALEKIT_K8S_HOSTS"] = str(self.node.hosts_file)
        hook.install()
        try:
            yield
        finally:
            hook.uninstall()
            os.environ.pop("SCALEKIT_K8S_HOSTS", None)

    def _logs(self, ns: str, name: str, previous: bool) -> str | None:
        return self.node.logs(ns, name, previous) if self.node else None

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.2)
