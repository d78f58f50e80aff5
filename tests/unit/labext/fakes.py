"""Stand-ins for the lab bridge's tests: a frontend's comm, a session, a clock, a kernel."""

from __future__ import annotations

import json
import threading
from typing import Any

from comm.base_comm import BaseComm
from views.snapshot_events import cluster_snapshot

from scalekit.events import AdaptChanged, ClusterSnapshot, EventBus, Notice, ScaleRequested


class FakeComm:
    """What a frontend would receive: every ``send``; the callbacks a comm holds."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[dict[str, Any]] = []
        self.msg_callback: Any = None
        self.close_callback: Any = None
        self._lock = threading.Lock()

    def send(self, data: dict[str, Any]) -> None:
        json.dumps(data, allow_nan=False)  # what the kernel would put on the wire
        with self._lock:
            self.sent.append(data)

    def on_msg(self, callback: Any) -> None:
        self.msg_callback = callback

    def on_close(self, callback: Any) -> None:
        self.close_callback = callback

    # as the kernel's comm manager does with the frontend's messages
    def receive(self, data: dict[str, Any]) -> None:
        self.msg_callback({"content": {"comm_id": "x", "data": data}})

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.sent if m["type"] == "snapshot"]

    @property
    def replies(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "reply"]


class FakeConfig:
    backend = "local"
    max_workers = 8


class FakeSession:
    """The part of ClusterSession the bridge uses; intents publish what the real one does."""

    def __init__(self, workers: int = 2) -> None:
        self.bus = EventBus()
        self.config = FakeConfig()
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None
        self.publish_snapshot(workers)

    def publish_snapshot(self, n: int, *, cpu: float = 50.0,
                         adaptive: tuple[int, int] | None = None) -> None:
        self.bus.publish(cluster_snapshot(n, cpu=cpu, adaptive=adaptive))

    def _check(self) -> None:
        if self.fail is not None:
            self.bus.publish(Notice(level="error", message=str(self.fail)))
            raise self.fail

    def scale(self, n: int, *, source: str = "api") -> None:
        self.calls.append(("scale", n, source))
        self._check()
        self.bus.publish(ScaleRequested(n=n, source=source))

    def adapt(self, minimum: int | None = None, maximum: int | None = None, *,
              source: str = "api") -> None:
        self.calls.append(("adapt", minimum, maximum, source))
        self._check()
        self.bus.publish(AdaptChanged(minimum=minimum or 1, maximum=maximum or 4,
                                      source=source))

    def stop_adapt(self, *, source: str = "api") -> None:
        self.calls.append(("stop_adapt", source))
        self.bus.publish(AdaptChanged(source=source))

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True
        self.bus.publish(ClusterSnapshot(backend="local", status="closed"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class KernelSideComm(BaseComm):
    """The kernel's comm class as ipykernel's: ``publish_msg`` would go out on IOPub;
    here it records ``(msg_type, data)``."""

    def __init__(self, **kwargs: Any) -> None:
        self.published: list[tuple[str, Any]] = []
        super().__init__(**kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        json.dumps(data, allow_nan=False)  # what the kernel would put on the wire
        self.published.append((msg_type, data))

    @property
    def replies(self) -> list[dict[str, Any]]:
        return [d for t, d in self.published if t == "comm_msg" and d.get("type") == "reply"]


class FakeManager:
    def __init__(self) -> None:
        self.targets: dict[str, Any] = {}

    def register_target(self, name: str, callback: Any) -> None:
        self.targets[name] = callback


class FakeKernel:
    def __init__(self) -> None:
        self.comm_manager = FakeManager()


class FakeShell:
    def __init__(self, kernel: Any = None) -> None:
        if kernel is not None:
            self.kernel = kernel
