"""Local clusters that outlive the kernel.

``scalekit cluster up`` starts a local cluster (the same workers as ``sk.cluster()``:
training-tuned nannies, GPU pinning, everything on 127.0.0.1) in a background process
of its own, which writes a scheduler file and a pid file into a private folder
(``~/.cache/scalekit/clusters/<name>/``, mode 0700) and serves until ``scalekit cluster
down`` (or SIGTERM) ends it and its workers. A notebook connects with
``sk.cluster(connect="local")`` (or ``"local:<name>"``, or the scheduler file's path):
closing that session, or the kernel, leaves the cluster running.

The background process adds three handlers to its scheduler so a connected notebook can
steer it like its own: ``scalekit_info`` (its settings), ``scalekit_replicas`` and
``scalekit_scale``. Adaptive scaling is decided in the notebook, where the fits run,
as for a Kubernetes worker group (:class:`~scalekit.backends.adaptive.WorkerGroupAdaptive`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from scalekit.backends.base import DaskClusterBackend, TrainingHooks
from scalekit.config import AdaptConfig, ClusterConfig
from scalekit.errors import ClusterError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_NAME = "default"


# -- where a background cluster keeps its files --------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterFiles:
    """The files of the background cluster ``name``."""

    name: str
    folder: str

    @property
    def scheduler_file(self) -> str:
        return os.path.join(self.folder, "scheduler.json")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.folder, "pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.folder, "cluster.log")

    def pid(self) -> int | None:
        """The background process's pid, if it still runs."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def address(self) -> str | None:
        try:
            with open(self.scheduler_file) as f:
                return str(json.load(f)["address"])
        except (OSError, ValueError, KeyError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def clusters_root() -> str:
    """``$XDG_CACHE_HOME/scalekit/clusters`` (``~/.cache/...``), private to this user: a
    scheduler file is a key to the cluster (whoever reaches the address can run code)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(cache, "scalekit", "clusters")
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    return root


def files_for(name: str = DEFAULT_NAME) -> ClusterFiles:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UsageError(f"cluster name {name!r}: use letters, digits, '-', '_' and '.'")
    return ClusterFiles(name, os.path.join(clusters_root(), name))


def list_clusters() -> list[ClusterFiles]:
    """Background clusters of this user that are running."""
    root = clusters_root()
    found = [ClusterFiles(n, os.path.join(root, n)) for n in sorted(os.listdir(root))]
    return [c for c in found if c.pid() is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the command line's side ---------------------------------------------------------------


def start(config: ClusterConfig, name: str = DEFAULT_NAME, timeout: float | None = None
          ) -> ClusterFiles:
    """Start the background cluster ``name``; return once its workers are up.

    Raises
    ------
    ClusterError
        When one of that name runs already, or the background process could not start
        its cluster (with the last lines of its log).
    """
    files = files_for(name)
    if files.pid() is not None:
        raise ClusterError(
            f"a background cluster {name!r} runs already (pid {files.pid()}, "
            f"{files.address()}); end it with `scalekit cluster down --name {name}` or "
            "choose another --name")
    os.makedirs(files.folder, mode=0o700, exist_ok=True)
    for stale in (files.scheduler_file, files.pid_file):
        if os.path.exists(stale):
            os.remove(stale)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    with open(files.log_file, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scalekit.backends.background", name,
             json.dumps(settings)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the terminal's process group: outlives it
        )
    deadline = time.monotonic() + (timeout or config.start_timeout + 30)
    while files.address() is None:
        if process.poll() is not None:
            raise ClusterError(
                f"the background cluster {name!r} failed to start (exit status "
                f"{process.returncode}); its log ({files.log_file}) ends with:\n"
                f"{files.log_tail()}")
        if time.monotonic() > deadline:
            stop(name)
            raise ClusterError(f"the background cluster {name!r} did not start in time; "
                               f"its log ({files.log_file}) ends with:\n{files.log_tail()}")
        time.sleep(0.1)
    return files


def stop(name: str = DEFAULT_NAME, timeout: float = 60.0) -> bool:
    """End the background cluster ``name`` and every process it started; ``False`` when
    none was running."""
    import psutil

    files = files_for(name)
    pid = files.pid()
    if pid is None:
        _remove(files)
        return False
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    os.kill(pid, signal.SIGTERM)  # it closes its cluster: workers, nannies, scheduler
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for proc in alive:  # whatever did not end in time
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    _remove(files)
    return True


def _remove(files: ClusterFiles) -> None:
    for path in (files.scheduler_file, files.pid_file):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


# -- the background process ------------------------------------------------------------------


def serve(name: str, settings: Mapping[str, Any]) -> int:
    """Run the cluster ``name`` until SIGTERM/SIGINT (the background process's main)."""
    import threading

    from scalekit.backends.local import LocalBackend

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    files = files_for(name)
    config = ClusterConfig(**dict(settings))
    backend = LocalBackend(config)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        backend.start()
        _add_handlers(backend, name)
        with open(files.pid_file, "w") as f:
            f.write(str(os.getpid()))
        with open(files.scheduler_file + ".tmp", "w") as f:  # the file means "ready"
            json.dump({"address": backend.scheduler_address, "name": name,
                       "pid": os.getpid(), "dashboard": backend.dashboard_link}, f)
        os.replace(files.scheduler_file + ".tmp", files.scheduler_file)
        logger.info("background cluster %r at %s", name, backend.scheduler_address)
        stopping.wait()
    finally:
        logger.info("background cluster %r closing", name)
        backend.close()
        _remove(files)
    return 0


def _add_handlers(backend: Any, name: str) -> None:
    cluster = backend.cluster
    config: ClusterConfig = backend.config

    async def info() -> dict[str, Any]:
        return {"name": name, "config": dataclasses.asdict(config), "pid": os.getpid(),
                "dashboard": backend.dashboard_link}

    async def replicas() -> int:
        return len(cluster.worker_spec)

    async def scale(n: int) -> int:
        cluster.scale(config.check_workers(n))
        return len(cluster.worker_spec)

    handlers = cluster.scheduler.handlers
    handlers.update({"scalekit_info": info, "scalekit_replicas": replicas,
                     "scalekit_scale": scale})


# -- the notebook's side ---------------------------------------------------------------------


def resolve_connect(connect: str) -> tuple[str, str | None]:
    """``(scheduler address, background cluster name or None)`` for ``connect``:
    ``"local"`` / ``"local:<name>"`` (a background cluster of this user), a scheduler
    file's path, or a scheduler address."""
    if connect == "local" or connect.startswith("local:"):
        name = connect.partition(":")[2] or DEFAULT_NAME
        files = files_for(name)
        address = files.address() if files.pid() is not None else None
        if address is None:
            raise ClusterError(
                f"no background cluster {name!r} is running; start one with "
                f"`scalekit cluster up{'' if name == DEFAULT_NAME else ' --name ' + name}`")
        return address, name
    if "://" in connect:
        return connect, None
    try:
        with open(os.path.expanduser(connect)) as f:
            return str(json.load(f)["address"]), None
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            f"connect={connect!r}: expected 'local', 'local:<name>', a scheduler file or "
            f"an address such as 'tcp://127.0.0.1:8786' ({type(exc).__name__}: {exc})"
        ) from exc


def connected_config(address: str, *, timeout: float = 10.0) -> ClusterConfig | None:
    """The settings of the background cluster at ``address`` (``None`` for a Dask
    scheduler that is not one).

    Raises
    ------
    ClusterError
        When nothing answers at ``address``.
    """
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except OSError as exc:
        raise ClusterError(f"no Dask scheduler answers at {address}: {exc}") from exc
    try:
        # asked first, not tried: a scheduler logs a warning with a traceback for an
        # operation it does not know, which a notebook whose kernel runs it would show
        ours = client.run_on_scheduler(
            lambda dask_scheduler: "scalekit_info" in dask_scheduler.handlers)
        found = client.sync(client.scheduler.scalekit_info) if ours else None
    except Exception as exc:  # not ours, or not willing to say
        logger.debug("no scalekit_info at %s: %s", address, exc)
        return None
    finally:
        client.close()
    if not isinstance(found, dict) or "config" not in found:
        return None  # another Dask scheduler answers unknown operations with nothing
    config = dict(found["config"])
    if config.get("gpus") is not None:
        config["gpus"] = tuple(config["gpus"])
    return ClusterConfig(**config)


class ConnectedBackend(DaskClusterBackend):
    """A cluster this session connects to and does not own (``sk.cluster(connect=...)``):
    closing the session closes the connection, never the cluster.

    A scalekit background cluster can be scaled and adapted from here; any other Dask
    scheduler only trained on (scaling it says how to).
    """

    name = "connected"

    def __init__(self, config: ClusterConfig, address: str, *, steerable: bool,
                 hooks: TrainingHooks | None = None) -> None:
        super().__init__(config, hooks=hooks)
        self.address = address
        self.steerable = steerable

    def _make_cluster(self) -> Any:
        return _remote_cluster_class()(self.address, steerable=self.steerable)

    def start(self) -> None:
        super().start()  # waits for one worker (config.workers is 1 here)
        self._requested = len(self.client.nthreads())

    def close(self) -> None:
        """Close this session's connection; the cluster goes on."""
        super().close()

    def scale(self, n: int) -> None:
        self._check_steerable("scale")
        super().scale(n)

    def resize(self, n: int) -> None:
        self._check_steerable("scale")
        super().resize(n)

    def adapt(self, bounds: AdaptConfig) -> None:
        from scalekit.backends.adaptive import WorkerGroupAdaptive

        self._check_steerable("adapt")
        bounds.within(self.config.max_workers)
        self._start_adaptive(self._running(), WorkerGroupAdaptive, bounds)
        self._adaptive = (bounds.minimum, bounds.maximum)
        self._requested = None

    def _check_steerable(self, what: str) -> None:
        if not self.steerable:
            raise UsageError(
                f"this session is connected to a Dask scheduler at {self.address} that "
                f"scalekit did not start, so it cannot {what} it; scale it where it was "
                "started, or start one with `scalekit cluster up`")


def _remote_cluster_class() -> type:
    from distributed.core import rpc
    from distributed.deploy import Cluster

    class RemoteCluster(Cluster):
        """A ``Cluster`` over a scheduler that runs elsewhere: it scales through the
        background process's handlers and closes only its own connection."""

        def __init__(self, address: str, *, steerable: bool) -> None:
            super().__init__(asynchronous=False, name=f"connected {address}")
            self._supports_scaling = steerable
            self._loop_runner.start()
            self.scheduler_comm = rpc(address)
            self.sync(self._start)

        async def _start(self) -> None:
            # not Cluster._start: its worker-status subscription is a scheduler plugin
            # of one name, and would take the background process's own cluster off it
            # (that cluster then scales by stale worker lists); its metadata sync would
            # overwrite the cluster's own description
            from distributed.core import Status

            self.scheduler_info = await self.scheduler_comm.identity()
            self.status = Status.running

        def scale(self, n: int) -> None:
            self.sync(self.set_replicas, n)

        async def replicas(self) -> int:
            return int(await self.scheduler_comm.scalekit_replicas())

        async def set_replicas(self, n: int) -> None:
            await self.scheduler_comm.scalekit_scale(n=int(n))

        async def _close(self) -> None:
            await super()._close()
            self._loop_runner.stop()

    return RemoteCluster


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], json.loads(sys.argv[2])))
