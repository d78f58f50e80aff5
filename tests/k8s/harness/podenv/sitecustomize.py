"""Cluster DNS and pod networking for processes of the emulated cluster.

Loaded through ``PYTHONPATH``: names listed in the hosts file that ``SCALEKIT_K8S_HOSTS``
points at (service names, kept up to date by the emulated node) resolve to pod
addresses; every other name goes to the real resolver.

In a pod (``SCALEKIT_K8S_POD_IP`` set) binding "all interfaces" (``0.0.0.0``, ``""``, a
passive lookup of no host) binds the pod's own address instead: a pod's network has
only that interface, while these processes share the host's, where another process
(another pod's dashboard, a local Dask cluster on 127.0.0.1:8787) may hold the port.
"""

from __future__ import annotations

import json
import os
import socket

_original = socket.getaddrinfo
_original_bind = socket.socket.bind
_cache: dict[str, object] = {"mtime": None, "hosts": {}}
_ANY = (None, "", b"", "0.0.0.0", b"0.0.0.0")


def lookup(host: str, path: str | None = None) -> str | None:
    path = path or os.environ.get("SCALEKIT_K8S_HOSTS")
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not path or not isinstance(host, str) or not host or host[0].isdigit():
        return None
    try:
        mtime = os.stat(path).st_mtime_ns
        if mtime != _cache["mtime"]:
            with open(path) as f:
                _cache["hosts"], _cache["mtime"] = json.load(f), mtime
    except (OSError, ValueError):
        return None
    return _cache["hosts"].get(host.rstrip("."))  # type: ignore[union-attr]


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
    ip = lookup(host)
    return _original(ip or host, port, family, type, proto, flags)


def pod_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
    """Passive (bind) lookups of "any address" give the pod's address, IPv4 only."""
    pod_ip = os.environ.get("SCALEKIT_K8S_POD_IP")
    if pod_ip and family in (0, socket.AF_INET) and host in _ANY and (
            host not in (None, "", b"") or flags & socket.AI_PASSIVE):
        return _original(pod_ip, port, socket.AF_INET, type, proto, flags)
    return getaddrinfo(host, port, family, type, proto, flags)


def pod_bind(sock, address):
    pod_ip = os.environ.get("SCALEKIT_K8S_POD_IP")
    if (pod_ip and sock.family == socket.AF_INET and isinstance(address, tuple)
            and address[0] in _ANY):
        address = (pod_ip, *address[1:])
    return _original_bind(sock, address)


def install() -> None:
    socket.getaddrinfo = getaddrinfo


def install_pod_network() -> None:
    socket.getaddrinfo = pod_getaddrinfo
    socket.socket.bind = pod_bind


def uninstall() -> None:
    socket.getaddrinfo = _original
    socket.socket.bind = _original_bind


if os.environ.get("SCALEKIT_K8S_POD_IP"):
    install_pod_network()
elif os.environ.get("SCALEKIT_K8S_HOSTS"):
    install()
