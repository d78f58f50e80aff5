"""One pod of the emulated node: its container as a local process, from "image pull"
through its volumes and env (Secrets, ConfigMaps, the downward API), readiness probes and
restarts with back-off, to graceful termination. See kubelet.py for the node around it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .store import ApiError, now

if TYPE_CHECKING:
    from .kubelet import Image, Node


class ContainerConfigError(Exception):
    """A container's env or volumes refer to a Secret/ConfigMap (or key) that is missing."""


class PodRunner:
    """One pod: 'pull', mount, start, probe, restart with back-off, terminate."""

    def __init__(self, node: Node, pod: dict) -> None:
        self.node, self.store = node, node.store
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = node.allocate_ip()
        self.dir = node.workdir / "pods" / f"{self.ns}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.mounts: dict[str, str] = {}  # mount path in the container -> local folder
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
        await self._mount(spec, container)
        await self._wait_for_ports(container)
        backoff = self.node.timing.crash_backoff
        while not self.stopping.is_set():
            try:
                env = self._env(container, image)
            except ContainerConfigError as exc:  # the kubelet retries until it exists
                message = str(exc)
                self.set_status(containerStatuses=[self.container_status(state={"waiting": {
                    "reason": "CreateContainerConfigError", "message": message}})])
                self.event("Failed", f"Error: {message}", "Warning")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.node.timing.max_backoff)
                continue
            self.event("Started", f"Started container {container.get('name')}")
            code = await self._run_container(spec, container, image, env)
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

    # -- secrets, config maps, volumes ---------------------------------------------------
    def _object_data(self, kind: str, name: str) -> dict[str, str] | None:
        """A Secret's (decoded) or a ConfigMap's data; None if it does not exist."""
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        obj = self.store.find(self.store.kind("", "v1", plural), self.ns, name)
        if obj is None:
            return None
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return data

    def _key_ref(self, kind: str, ref: dict) -> str | None:
        data = self._object_data(kind, ref.get("name", ""))
        if data is None or ref.get("key") not in data:
            if ref.get("optional"):
                return None
            if data is None:
                raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            raise ContainerConfigError(f"couldn't find key {ref.get('key')} in {kind} "
                                       f"{self.ns}/{ref.get('name')}")
        return data[ref["key"]]

    def _env(self, container: dict, image: Image) -> dict[str, str]:
        pod = self.pod or {}
        env = self.node.base_env(self.name, image, self.ip)
        for item in container.get("env") or []:
            source = item.get("valueFrom") or {}
            if "value" in item:
                value: str | None = expand(str(item["value"]), env)
            elif "secretKeyRef" in source:
                value = self._key_ref("Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key_ref("ConfigMap", source["configMapKeyRef"])
            else:
                value = self._field_ref(pod, source)
            if value is not None:
                env[item["name"]] = self._localize(value)
        return env

    async def _mount(self, spec: dict, container: dict) -> None:
        """Write secret and configMap volumes to the pod's folder; wait for missing ones."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        reported: set[str] = set()
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"), {})
            kind = "Secret" if "secret" in volume else "ConfigMap" if "configMap" in volume \
                else None
            if kind is None:
                continue  # emptyDir and the rest: not emulated
            source = volume["secret" if kind == "Secret" else "configMap"]
            name = source.get("secretName" if kind == "Secret" else "name", "")
            folder = self.dir / "volumes" / mount["name"]
            while (data := self._object_data(kind, name)) is None and not source.get(
                    "optional"):
                message = (f'MountVolume.SetUp failed for volume "{mount["name"]}" : '
                           f'{kind.lower()} "{name}" not found')
                if message not in reported:
                    reported.add(message)
                    self.event("FailedMount", message, "Warning")
                await self._sleep(0.5)
                if self.stopping.is_set():
                    return
            folder.mkdir(parents=True, exist_ok=True)
            items = source.get("items") or [{"key": k, "path": k} for k in (data or {})]
            for item in items:
                if item["key"] not in (data or {}):
                    continue
                path = folder / item["path"]
                path.write_text((data or {})[item["key"]])
                path.chmod(int(item.get("mode", source.get("defaultMode", 0o644))))
            self.mounts[mount["mountPath"].rstrip("/")] = str(folder)

    def _busy_ports(self, container: dict) -> list[int]:
        """Declared container ports this pod cannot bind on its address."""
        busy = []
        for port in container.get("ports") or []:
            with socket.socket() as probe:
                # as servers do: TIME_WAIT leftovers do not count, listeners do
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.ip, int(port["containerPort"])))
                except OSError:
                    busy.append(int(port["containerPort"]))
        return busy

    async def _wait_for_ports(self, container: dict) -> None:
        """Pods share this machine's network: a process listening on every interface
        (0.0.0.0) holds a port for every pod address too. Starting anyway would bind
        another port (Dask does) while probes and services reach that process, so the
        pod waits, with an event that names the port, as it would for a free node."""
        reported: set[int] = set()
        while (busy := self._busy_ports(container)) and not self.stopping.is_set():
            if set(busy) - reported:
                reported |= set(busy)
                self.event("PortConflict", f"port(s) {busy} of {self.ip} are held by another "
                           "process of the emulating machine (listening on all "
                           "interfaces); waiting for them", "Warning")
            await self._sleep(1.0)

    def _localize(self, text: str) -> str:
        """Mount paths -> their local folders (no mount namespaces here)."""
        for path in sorted(self.mounts, key=len, reverse=True):
            text = text.replace(path, self.mounts[path])
        return text

    async def _run_container(self, spec: dict, container: dict, image: Image,
                             env: dict[str, str]) -> int:
        argv = [self._localize(expand(a, env)) for a in (container.get("command") or []) + (
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
        streak = 0  # consecutive results that disagree with `ready`
        while self.proc.poll() is None and not self.stopping.is_set():
            if time.monotonic() >= next_probe:
                ok = await self._probe(probe, container)
                next_probe = time.monotonic() + max(
                    self.node.timing.probe_period,
                    min(float((probe or {}).get("periodSeconds", 1)), 2.0))
                # a kubelet flips readiness after successThreshold successes (default 1)
                # or failureThreshold failures (default 3) in a row, not after one probe
                streak = streak + 1 if ok != ready else 0
                threshold = int((probe or {}).get(
                    "successThreshold" if ok else "failureThreshold", 1 if ok else 3))
                if ok != ready and streak >= threshold:
                    ready, streak = ok, 0
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
            # the probe's own timeout (Kubernetes' default: 1 s), capped so that a hung
            # container cannot stall this pod's loop
            timeout = min(float(probe.get("timeoutSeconds", 1)), self.node.timing.max_probe)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, int(port)), timeout)
                path = http.get("path", "/")
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {self.ip}\r\n\r\n".encode())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), timeout)
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
            return ""  # resourceFieldRef: not emulated
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


