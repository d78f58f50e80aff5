"""The emulated node: a kubelet that runs each Pod's container as a local process, a
Deployment controller, and the cluster DNS.

Pod networking: every pod gets its own loopback address (127.B.x.y, one random B per
harness so parallel test runs do not collide). ``0.0.0.0`` in a container's arguments
becomes that address, ``dask scheduler`` / ``dask worker`` without a host option get
``--host <pod IP>``, and a Python process that binds "all interfaces" anyway (a
dashboard's ``:8787``) binds the pod's address (``podenv/sitecustomize.py``, given the
address in ``SCALEKIT_K8S_POD_IP``): the pod's only interface, as on a real node. Service
names (``svc``, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.cluster.local``) resolve to a
running pod behind the service through a ``getaddrinfo`` hook in the same file, which
reads the hosts file this module keeps up to date.

Secrets and ConfigMaps: ``env`` entries with ``secretKeyRef``/``configMapKeyRef`` are
read from the store (a missing object or key: ``CreateContainerConfigError``, retried),
and ``secret``/``configMap`` volumes are written to the pod's folder (a missing object:
the pod waits in ``ContainerCreating`` with ``FailedMount`` events, as a kubelet does).
There are no mount namespaces, so a mount path in the container's command, arguments
and env is rewritten to that folder.

Images are not pulled: an :class:`ImageTable` says what an image name means here
(this machine's Python environment, a failing pull, or a directory of executables).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import string
import sys
from pathlib import Path

from .pod import PodRunner
from .store import ApiError, Kind, Store, now

PODENV = Path(__file__).parent / "podenv"


@dataclasses.dataclass
class Image:
    """What running an image means on this node."""

    bin_dir: str | None = None  # prepended to PATH; None: this Python environment's bin
    pull_error: str | None = None  # e.g. 'manifest unknown'
    pythonpath: tuple[str, ...] = ()


class ImageTable:
    """Image name -> :class:`Image`; any name not listed runs this environment."""

    def __init__(self, default_pythonpath: tuple[str, ...] = ()) -> None:
        self.default = Image(pythonpath=default_pythonpath)
        self.images: dict[str, Image] = {}

    def add(self, name: str, image: Image) -> None:
        self.images[name] = image

    def lookup(self, name: str) -> Image:
        return self.images.get(name, self.default)


@dataclasses.dataclass
class Timing:
    crash_backoff: float = 1.0  # first back-off after a crash (a real kubelet: 10 s)
    max_backoff: float = 8.0  # a real kubelet: 300 s
    max_grace: float = 10.0  # SIGTERM -> SIGKILL at most this long
    probe_period: float = 0.5
    max_probe: float = 5.0  # a probe's timeoutSeconds, at most this long


class Node:
    """Kubelet, Deployment controller and DNS for one emulated cluster."""

    def __init__(self, store: Store, workdir: Path, images: ImageTable, api_port: int,
                 timing: Timing | None = None) -> None:
        self.store = store
        self.workdir = workdir
        self.images = images
        self.api_port = api_port
        self.timing = timing or Timing()
        self.node_name = "emulated-node"
        self.pods_kind: Kind = store.kind("", "v1", "pods")
        self.hosts_file = workdir / "hosts.json"
        self.hosts_file.write_text("{}")
        self.runners: dict[tuple[str, str], PodRunner] = {}
        self._block = random.randint(20, 250)
        self._next_ip = 2
        self._dns: dict[str, str] = {}
        self._event_seq = 0
        store.ip_pool = self.allocate_ip
        store.listeners.append(self._on_change)

    def allocate_ip(self) -> str:
        n = self._next_ip
        self._next_ip += 1
        return f"127.{self._block}.{n // 250}.{n % 250 + 2}"

    def base_env(self, pod_name: str, image: Image, pod_ip: str) -> dict[str, str]:
        bin_dir = image.bin_dir or os.path.dirname(sys.executable)
        paths = [str(PODENV), *image.pythonpath]
        return {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod_name,
            "PYTHONPATH": ":".join(paths),
            "PYTHONUNBUFFERED": "1",
            "SCALEKIT_K8S_HOSTS": str(self.hosts_file),
            "SCALEKIT_K8S_POD_IP": pod_ip,  # podenv/sitecustomize.py binds it, not 0.0.0.0
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }

    @staticmethod
    def network_args(argv: list[str], ip: str) -> list[str]:
        argv = [a.replace("0.0.0.0", ip) for a in argv]
        names = [os.path.basename(a) for a in argv[:2]]
        is_dask = (names[:1] == ["dask"] and argv[1:2] in (["scheduler"], ["worker"])) or (
            names[:1] in (["dask-scheduler"], ["dask-worker"]))
        flags = {"--host", "--listen-address", "--interface"}
        if is_dask and not any(a.split("=")[0] in flags for a in argv):
            argv = [*argv, "--host", ip]
        return argv

    def event(self, ns: str, kind: str, name: str, uid: str, reason: str, message: str,
              type_: str = "Normal") -> None:
        self._event_seq += 1
        stamp = now()
        with contextlib.suppress(ApiError):
            self.store.create(self.store.kind("", "v1", "events"), ns, {"metadata": {
                "name": f"{name}.{self._event_seq:x}", "namespace": ns},
                "involvedObject": {"kind": kind, "name": name, "namespace": ns, "uid": uid,
                                   "apiVersion": "v1"},
                "reason": reason, "message": message, "type": type_, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "kubelet", "host": self.node_name}})

    def logs(self, ns: str, name: str, previous: bool) -> str | None:
        runner = self.runners.get((ns, name))
        if runner is None:
            path = self.workdir / "pods" / f"{ns}_{name}"
            runs = sorted(path.glob("run*.log"), key=lambda p: int(p.stem[3:])) if (
                path.exists()) else []
            if len(runs) < (2 if previous else 1):
                return None
            return runs[-2 if previous else -1].read_text(errors="replace")
        return runner.logs(previous)

    # -- reacting to changes -----------------------------------------------------------
    def _on_change(self, kind: Kind, event_type: str, obj: dict, old: dict | None) -> None:
        asyncio.get_running_loop().call_soon(self._react, kind, event_type, obj, old)

    def _react(self, kind: Kind, event_type: str, obj: dict, old: dict | None) -> None:
        meta = obj["metadata"]
        if kind.kind == "Pod":
            key = (meta["namespace"], meta["name"])
            runner = self.runners.get(key)
            if event_type == "ADDED" and runner is None:
                self.runners[key] = PodRunner(self, obj)
            elif runner is not None and runner.uid == meta["uid"] and (
                    event_type == "DELETED" or meta.get("deletionTimestamp")):
                runner.terminate()
            for owner in meta.get("ownerReferences") or []:
                if owner.get("kind") == "Deployment":
                    dep = self.store.find(self.store.kind("apps", "v1", "deployments"),
                                          meta["namespace"], owner["name"])
                    if dep is not None and dep["metadata"]["uid"] == owner.get("uid"):
                        self.reconcile(dep)
            self._update_dns()
        elif kind.kind == "Deployment" and event_type != "DELETED":
            current = self.store.find(kind, meta["namespace"], meta["name"])
            if current is not None:
                self.reconcile(current)
        elif kind.kind == "Service":
            self._update_dns()

    def reconcile(self, dep: dict) -> None:
        kind = self.pods_kind
        meta = dep["metadata"]
        ns, uid = meta["namespace"], meta["uid"]
        owned = [p for p in self.store.list(kind, ns) if any(
            o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
        alive = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
        want = int(dep["spec"].get("replicas", 1))
        template = dep["spec"].get("template", {})
        digest = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        for _ in range(want - len(alive)):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            labels = {**(template.get("metadata", {}).get("labels") or {}),
                      "pod-template-hash": digest}
            self.store.create(kind, ns, {
                "metadata": {
                    "name": f"{meta['name'][:(63 - 17)]}-{digest}-{suffix}", "namespace": ns,
                    "labels": labels,
                    "annotations": template.get("metadata", {}).get("annotations") or {},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": meta["name"], "uid": uid, "controller": True,
                                         "blockOwnerDeletion": True}]},
                "spec": copy.deepcopy(template.get("spec", {}))})
        for pod in sorted(alive, key=lambda p: p["metadata"]["creationTimestamp"])[want:]:
            self.store.delete(kind, ns, pod["metadata"]["name"])
        alive = [p for p in self.store.list(kind, ns) if not p["metadata"].get(
            "deletionTimestamp") and any(o.get("uid") == uid for o in p["metadata"].get(
                "ownerReferences") or [])]
        ready = sum(1 for p in alive if _is_ready(p))
        status = {"observedGeneration": meta.get("generation", 1), "replicas": len(alive),
                  "updatedReplicas": len(alive), "readyReplicas": ready,
                  "availableReplicas": ready, "unavailableReplicas": len(alive) - ready}
        self.store.set_status(self.store.kind("apps", "v1", "deployments"), ns, meta["name"],
                              {k: v for k, v in status.items() if v or k == "replicas"})

    def _update_dns(self) -> None:
        hosts: dict[str, str] = {}
        services = self.store.list(self.store.kind("", "v1", "services"))
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selector = svc.get("spec", {}).get("selector") or {}
            pods = [p for p in self.store.list(self.pods_kind, ns)
                    if selector and all(
                        (p["metadata"].get("labels") or {}).get(k) == v
                        for k, v in selector.items())
                    and not p["metadata"].get("deletionTimestamp")
                    and p.get("status", {}).get("phase") == "Running"]
            pods.sort(key=lambda p: not _is_ready(p))
            if pods:
                ip = pods[0]["status"]["podIP"]
                for host in (name, f"{name}.{ns}", f"{name}.{ns}.svc",
                             f"{name}.{ns}.svc.cluster.local"):
                    hosts[host] = ip
        if hosts != self._dns:
            self._dns = hosts
            tmp = self.hosts_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(hosts))
            os.replace(tmp, self.hosts_file)

    async def shutdown(self) -> None:
        for runner in list(self.runners.values()):
            runner.terminate()
        tasks = [r.task for r in self.runners.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.timing.max_grace + 5)


def _is_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
