"""The emulated node: a kubelet that runs each Pod's container as a local process, a
Deployment controller, and the cluster DNS.

Pod networking: every pod gets its own loopback address (127.B.x.y, one random B per
harness so parallel test runs do not collide). ``0.0.0.0`` in a container's arguments
becomes that address, and ``dask scheduler`` / ``dask worker`` without a host option get
``--host <pod IP>``: the pod's only interface, as on a real node. Service names
(``svc``, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.cluster.local``) resolve to a running
pod behind the service through a ``getaddrinfo`` hook (``podenv/sitecustomize.py``)
that reads the hosts file this module keeps up to date.

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
import re
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


class PodRunner:
    """One pod: 'pull', start, probe, restart with back-off, terminate."""

    def __init__(self, node: Node, pod: dict) -> None:
        self.node, self.store = node, node.store
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = node.allocate_ip()
        self.dir = node.workdir / "pods" / f"{self.ns}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.stopping = asyncio.Event()
        self.task = asyncio.ensure_future(self.run())

    # -- status helpers ----------------------------------------------------------------
    @property
    def pod(self) -> dict | None:
        pod = self.store.find(self.node.pods_kind, self.ns, self.name)
        return pod if pod is not None and pod["metadata"]["uid"] == self.uid else None

    def set_status(self, **changes: Any) -> None:
        pod = self.pod
        if pod is None:
            return
        status = copy.deepcopy(pod.get("status") or {})
        status.update(changes)
        self.store.set_status(self.node.pods_kind, self.ns, self.name, status)

    def container_status(self, **changes: Any) -> dict:
        pod = self.pod or {}
        container = pod.get("spec", {}).get("containers", [{}])[0]
        old = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
        status = {"name": container.get("name", "main"), "image": container.get("image", ""),
                  "imageID": "", "ready": False, "started": False, "restartCount": 0,
                  "state": {"waiting": {"reason": "ContainerCreating"}}}
        status.update({k: v for k, v in old.items() if k in status or k == "lastState"})
        status.update(changes)
        return status

    def conditions(self, ready: bool) -> list[dict]:
        flag = "True" if ready else "False"
        stamp = now()
        return [{"type": t, "status": s, "lastTransitionTime": stamp} for t, s in (
            ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag),
            ("Ready", flag))]

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        self.node.event(self.ns, "Pod", self.name, self.uid, reason, message, kind)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except ApiError as exc:  # e.g. a container without a command: stays Pending
            self.event("Failed", f"Error: {exc.message}", "Warning")
            self.set_status(containerStatuses=[self.container_status(state={"waiting": {
                "reason": "CreateContainerError", "message": exc.message}})])
            await self.stopping.wait()
        except asyncio.CancelledError:
            self._kill(signal.SIGKILL)
            raise
        finally:
            await self._finish()

    async def _run(self) -> None:
        pod = self.pod
        if pod is None:
            return
        spec = pod["spec"]
        container = spec["containers"][0]
        self.set_status(phase="Pending", hostIP="127.0.0.1", podIP=self.ip,
                        podIPs=[{"ip": self.ip}], startTime=now(), qosClass="BestEffort",
                        conditions=self.conditions(False),
                        containerStatuses=[self.container_status()])
        self.event("Scheduled", f"Successfully assigned {self.ns}/{self.name} to "
                   f"{self.node.node_name}")
        image = self.node.images.lookup(container.get("image", ""))
        backoff = self.node.timing.crash_backoff
        while image.pull_error and not self.stopping.is_set():
            message = (f'Failed to pull image "{container.get("image")}": {image.pull_error}')
            self.set_status(containerStatuses=[self.container_status(
                state={"waiting": {"reason": "ErrImagePull", "message": message}})])
            self.event("Failed", message, "Warning")
            await self._sleep(backoff / 2)
            self.set_status(containerStatuses=[self.container_status(state={"waiting": {
                "reason": "ImagePullBackOff",
                "message": f'Back-off pulling image "{container.get("image")}"'}})])
            self.event("BackOff", f'Back-off pulling image "{container.get("image")}"',
                       "Warning")
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.node.timing.max_backoff)
        backoff = self.node.timing.crash_backoff
        while not self.stopping.is_set():
            self.event("Started", f"Started container {container.get('name')}")
            code = await self._run_container(spec, container, image)
            if self.stopping.is_set():
                return
            restarts = self.container_status().get("restartCount", 0)
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "finishedAt": now()}
            policy = spec.get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.set_status(phase="Succeeded" if code == 0 else "Failed",
                                conditions=self.conditions(False),
                                containerStatuses=[self.container_status(
                                    ready=False, started=False,
                                    state={"terminated": terminated})])
                return
            message = (f"back-off {backoff:g}s restarting failed container="
                       f"{container.get('name')} pod={self.name}_{self.ns}({self.uid})")
            self.set_status(conditions=self.conditions(False), containerStatuses=[
                self.container_status(ready=False, started=False, restartCount=restarts + 1,
                                      lastState={"terminated": terminated},
                                      state={"waiting": {"reason": "CrashLoopBackOff",
                                                         "message": message}})])
            self.event("BackOff", "Back-off restarting failed container "
                       f"{container.get('name')} in pod {self.name}_{self.ns}", "Warning")
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.node.timing.max_backoff)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _run_container(self, spec: dict, container: dict, image: Image) -> int:
        pod = self.pod or {}
        env = self.node.base_env(self.name, image)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            elif "valueFrom" in item:
                env[item["name"]] = self._field_ref(pod, item["valueFrom"])
        argv = [expand(a, env) for a in (container.get("command") or []) + (
            container.get("args") or [])]
        argv = self.node.network_args(argv, self.ip)
        if not argv:
            raise ApiError(422, "Invalid", "container without command or args")
        exe = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        self.runs += 1
        log_path = self.dir / f"run{self.runs}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        try:
            self.proc = subprocess.Popen(
                [exe, *argv[1:]], env=env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.write(f"exec {argv[0]!r} failed: {exc}\n".encode())
            log.close()
            return 127
        finally:
            log.close()
        self.set_status(phase="Running", containerStatuses=[self.container_status(
            started=True, ready=False, state={"running": {"startedAt": now()}})])
        probe = container.get("readinessProbe")
        ready = False
        next_probe = 0.0
        while self.proc.poll() is None and not self.stopping.is_set():
            if time.monotonic() >= next_probe:
                ok = await self._probe(probe, container)
                next_probe = time.monotonic() + max(
                    self.node.timing.probe_period,
                    min(float((probe or {}).get("periodSeconds", 1)), 2.0))
                if ok != ready:
                    ready = ok
                    self.set_status(conditions=self.conditions(ready), containerStatuses=[
                        self.container_status(ready=ready, started=True)])
            await self._sleep(0.1)
        if self.stopping.is_set():
            return -1
        return self.proc.returncode

    async def _probe(self, probe: dict | None, container: dict) -> bool:
        if not probe:
            return True
        http = probe.get("httpGet")
        if http:
            port = http.get("port")
            if isinstance(port, str) and not port.isdigit():
                port = next((p["containerPort"] for p in container.get("ports", [])
                             if p.get("name") == port), None)
            if port is None:
                return False
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, int(port)), 1.0)
                path = http.get("path", "/")
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {self.ip}\r\n\r\n".encode())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 1.0)
                writer.close()
                return bool(re.match(rb"HTTP/\d\.\d [23]\d\d", line))
            except (OSError, TimeoutError):
                return False
        tcp = probe.get("tcpSocket")
        if tcp:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, int(tcp["port"])), 1.0)
                writer.close()
                return True
            except (OSError, TimeoutError, ValueError):
                return False
        return True  # exec probes: not emulated

    def _field_ref(self, pod: dict, source: dict) -> str:
        ref = source.get("fieldRef")
        if not ref:
            return ""  # resourceFieldRef, secretKeyRef, configMapKeyRef: not emulated
        path = ref["fieldPath"]
        if path == "status.podIP":
            return self.ip
        if path == "spec.nodeName":
            return self.node.node_name
        match = re.match(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((pod["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
        value: Any = pod
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return str(value)

    # -- termination -------------------------------------------------------------------
    def terminate(self) -> None:
        self.stopping.set()

    def _kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    async def _finish(self) -> None:
        pod = self.pod
        grace = self.node.timing.max_grace if pod is not None else 1.0
        if pod is not None and pod["metadata"].get("deletionGracePeriodSeconds") is not None:
            grace = min(grace, float(pod["metadata"]["deletionGracePeriodSeconds"]))
        if self.proc is not None and self.proc.poll() is None:
            self._kill(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self._kill(signal.SIGKILL)  # the whole process group, stragglers included
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.node.runners.pop((self.ns, self.name), None)
        if self.pod is not None and self.pod["metadata"].get("deletionTimestamp"):
            self.store.remove(self.node.pods_kind, self.ns, self.name)

    def logs(self, previous: bool) -> str | None:
        run = self.runs - 1 if previous else self.runs
        path = self.dir / f"run{run}.log"
        if run < 1 or not path.exists():
            return None
        return path.read_text(errors="replace")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``$$(VAR)`` escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  text)


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

    def base_env(self, pod_name: str, image: Image) -> dict[str, str]:
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
