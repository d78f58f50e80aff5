"""Cluster DNS for processes of the emulated cluster (pods and the operator).

Loaded through ``PYTHONPATH``: names listed in the hosts file that ``SCALEKIT_K8S_HOSTS``
points at (service names, kept up to date by the emulated node) resolve to pod
addresses; every other name goes to the real resolver.
"""

from __future__ import annotations

import json
import os
import socket

_original = socket.getaddrinfo
_cache: dict[str, object] = {"mtime": None, "hosts": {}}


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


def install() -> None:
    socket.getaddrinfo = getaddrinfo


def uninstall() -> None:
    socket.getaddrinfo = _original


if os.environ.get("SCALEKIT_K8S_HOSTS"):
    install()
