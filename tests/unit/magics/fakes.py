"""Stand-ins for the magic's tests: a session, its factory, and a backend for sk.cluster()."""

from __future__ import annotations

from scalekit.config import AdaptConfig, ClusterConfig
from scalekit.events import ClusterSnapshot


class FakeSession:
    """Just enough of ClusterSession, validating with the real config objects."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.config = ClusterConfig.from_config(**kwargs)
        self.workers = self.config.workers
        self.adaptive: tuple[int, int] | None = None
        self.closed = False
        self.calls: list[tuple[object, ...]] = []
        self.dashboard_link = None

    def scale(self, n: int) -> None:
        n = self.config.check_workers(n)
        self.calls.append(("scale", n))
        self.adaptive, self.workers = None, n

    def adapt(self, minimum: int | None = None, maximum: int | None = None) -> None:
        bounds = AdaptConfig.from_config(minimum=minimum, maximum=maximum)
        bounds.within(self.config.max_workers)
        self.calls.append(("adapt", bounds.minimum, bounds.maximum))
        self.adaptive = (bounds.minimum, bounds.maximum)

    def stop_adapt(self) -> None:
        self.calls.append(("stop_adapt",))
        self.adaptive = None

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True

    def state(self) -> tuple[int, tuple[int, int] | None, bool]:
        return self.workers, self.adaptive, self.closed

    def __repr__(self) -> str:
        return f"FakeSession: {self.workers} workers, adaptive={self.adaptive}"


class Factory:
    def __init__(self) -> None:
        self.made: list[FakeSession] = []

    def __call__(self, **kwargs: object) -> FakeSession:
        session = FakeSession(**kwargs)
        self.made.append(session)
        return session


class FakeBackend:
    """A backend that runs nothing: enough for ``sk.cluster()`` to start a real session."""

    name = "local"

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.workers = config.workers
        self.adaptive: tuple[int, int] | None = None
        self.closed = False
        self.calls: list[tuple[object, ...]] = []
        self.dashboard_link = None

    def start(self) -> None:
        self.calls.append(("start",))

    def scale(self, n: int) -> None:
        self.calls.append(("scale", n))
        self.workers = n

    def resize(self, n: int) -> None:
        self.scale(n)

    def adapt(self, bounds: AdaptConfig) -> None:
        self.calls.append(("adapt", bounds.minimum, bounds.maximum))
        self.adaptive = (bounds.minimum, bounds.maximum)

    def stop_adapt(self) -> None:
        self.calls.append(("stop_adapt",))
        self.adaptive = None

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(backend="local", status="closed" if self.closed else "running",
                               requested=self.workers, adaptive=self.adaptive)


def run(shell, line: str) -> None:
    shell.run_line_magic("scalekit", line)
