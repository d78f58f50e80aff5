"""The emulated node's pods: their network (a pod's only interface is its own address)
and their configuration from Secrets (volumes, env references), as a kubelet does it."""

from __future__ import annotations

import base64
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def create(kube, plural: str, body: dict) -> dict:
    return kube.call(lambda: kube.store.create(kube.store.kind("", "v1", plural),
                                               kube.namespace, body))


def pod(kube, name: str) -> dict:
    (found,) = [p for p in kube.pods() if p["metadata"]["name"] == name]
    return found


def ready(kube, name: str) -> bool:
    conditions = pod(kube, name)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def log(kube, name: str) -> str:
    return kube.call(kube.node.logs, kube.namespace, name, False) or ""


def test_a_pod_binds_its_own_address_when_asked_for_every_interface(notebook):
    """Issue 13, item 20: a scheduler pod's dashboard (``:8787``: every interface) failed
    to start while another process held the port on the host's 127.0.0.1. On a node
    each pod has its own network; here each binds its own address."""
    kube = notebook
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # another process on the host holds this port
    taken.listen()
    port = taken.getsockname()[1]
    try:
        create(kube, "pods", {"metadata": {"name": "dashboard", "labels": {"t": "bind"}},
                              "spec": {"containers": [{
            "name": "scheduler", "image": "any",
            "args": ["dask", "scheduler", "--port", "0", "--dashboard-address", f":{port}"],
            "ports": [{"name": "http-dashboard", "containerPort": port}],
            "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                               "periodSeconds": 1}}]}})
        bare = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); " \
               "print('bound', s.getsockname()[0], flush=True)"
        create(kube, "pods", {"metadata": {"name": "bare", "labels": {"t": "bind"}}, "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "any", "command": [sys.executable],
                            "args": ["-c", bare]}]}})
        kube.wait_for(lambda: ready(kube, "dashboard"), 90, "the scheduler pod to be ready")
        ip = pod(kube, "dashboard")["status"]["podIP"]
        assert f"{ip}:{port}" in log(kube, "dashboard")  # its dashboard, on its address
        kube.wait_for(lambda: "bound" in log(kube, "bare"), 60, "the bare pod's bind")
        assert f"bound {pod(kube, 'bare')['status']['podIP']}" in log(kube, "bare")
    finally:
        taken.close()
        for name in ("dashboard", "bare"):
            kube.delete_pod(name, grace=0)


def test_a_port_held_on_every_interface_of_the_machine_holds_the_pod_back(notebook):
    """Pods share this machine's network: a listener on 0.0.0.0 owns that port for every
    pod address. The pod waits for it (an event names it) instead of binding another
    port while its probe reaches the other process."""
    kube = notebook
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    serve = (f"import http.server as h; h.HTTPServer(('0.0.0.0', {port}), "
             "h.SimpleHTTPRequestHandler).serve_forever()")
    try:
        create(kube, "pods", {"metadata": {"name": "server"}, "spec": {"containers": [{
            "name": "main", "image": "any", "command": [sys.executable], "args": ["-c", serve],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "/"}}}]}})

        def conflict() -> list[str]:
            return [e["message"] for e in kube.objects("events")
                    if e["involvedObject"]["name"] == "server" and e["reason"] == "PortConflict"]

        kube.wait_for(conflict, 30, "a PortConflict event")
        assert f"[{port}]" in conflict()[0]
        assert not ready(kube, "server") and "Started" not in {
            e["reason"] for e in kube.objects("events") if e["involvedObject"]["name"] == "server"}
        taken.close()  # the port is free: the pod starts on its own address
        kube.wait_for(lambda: ready(kube, "server"), 60, "the pod to be ready")
    finally:
        taken.close()
        kube.delete_pod("server", grace=0)


def test_secret_volumes_and_references_wait_for_their_secret(notebook):
    kube = notebook
    script = ("import os, stat; p = '/etc/creds/token'; "
              "print('file', open(p).read(), oct(stat.S_IMODE(os.stat(p).st_mode)), "
              "'env', os.environ['TOKEN'], 'path', os.environ['TOKEN_FILE'], flush=True); "
              "import time; time.sleep(60)")
    create(kube, "pods", {"metadata": {"name": "reader"}, "spec": {
        "volumes": [{"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440,
                                                 "items": [{"key": "t", "path": "token"}]}}],
        "containers": [{"name": "main", "image": "any", "command": [sys.executable],
                        "args": ["-c", script],
                        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}],
                        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                                    "name": "creds", "key": "t"}}},
                                {"name": "TOKEN_FILE", "value": "/etc/creds/token"}]}]}})
    try:
        time.sleep(2)
        status = pod(kube, "reader")["status"]
        assert status["phase"] == "Pending"  # no Secret yet: the volume cannot be mounted
        assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == (
            "ContainerCreating")
        events = [e["message"] for e in kube.objects("events")
                  if e["involvedObject"]["name"] == "reader"]
        assert 'MountVolume.SetUp failed for volume "creds" : secret "creds" not found' in (
            events)
        create(kube, "secrets", {"metadata": {"name": "creds"}, "data": {
            "t": base64.b64encode(b"s3cr3t-value").decode()}})
        kube.wait_for(lambda: "file" in log(kube, "reader"), 60, "the pod to read its secret")
        text = log(kube, "reader")
        assert "file s3cr3t-value 0o440 env s3cr3t-value" in text
        # no mount namespace: the path points at the pod's own copy, not at /etc
        local = text.split("path ", 1)[1].split()[0]
        assert local.endswith("/volumes/creds/token") and Path(local).exists()
        assert stat.S_IMODE(Path(local).stat().st_mode) == 0o440
    finally:
        kube.delete_pod("reader", grace=0)
        kube.call(lambda: kube.store.delete(kube.store.kind("", "v1", "secrets"),
                                            kube.namespace, "creds"))
