"""What the controller does to workers that may not answer: end a hung one, find those
whose heartbeats stopped, and bound a call that could wait on a stopped one for good."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit.training.host_reduce import host_identity

if TYPE_CHECKING:
    from distributed import Client

# a worker whose heartbeats (every 0.5 s on a small cluster) stopped this many hang
# timeouts before the others' answers nothing; a busy one still beats
SILENT_FACTOR = 2.0


def kill_local_or_restart(client: Client, address: str, where: tuple[str, int] | None) -> None:
    """End a hung worker process: SIGKILL when it runs on this host (a stopped process
    ignores everything else), otherwise ask its nanny to restart it.

    "This host" is the hostname *and* boot id (:func:`host_identity`): a cloned VM or a
    container with the same hostname must never get a local PID killed.
    """
    if where is not None and where[0] == host_identity():
        if where[1] == os.getpid():  # an in-process worker: this is the notebook itself
            client.restart_workers([address], raise_for_error=False)
            return
        try:
            os.kill(where[1], signal.SIGKILL)
            return
        except ProcessLookupError:
            return
    client.restart_workers([address], raise_for_error=False)


def bounded(call: Callable[[], Any], timeout: float, what: str) -> Any:
    """``call()``, or ``TimeoutError`` after ``timeout`` seconds.

    A worker that stopped (SIGSTOP, a frozen VM) answers nothing, and the scheduler's
    broadcast to it waits for good (``scatter``'s own ``timeout`` only bounds the wait
    for workers to exist). The call goes on in a daemon thread until the stopped worker
    is ended and its connection closes.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"scalekit-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def unresponsive(client: Client, workers: list[str], timeout: float) -> list[str]:
    """``workers`` whose heartbeats stopped ``timeout`` seconds before the freshest
    worker's (a stopped process, a frozen machine). Heartbeats are compared with each
    other, so the notebook's and the scheduler's clocks never meet."""
    info = client.scheduler_info(n_workers=-1).get("workers") or {}
    seen = {a: float(w.get("last_seen") or 0.0) for a, w in info.items()}
    if not seen:
        return []
    newest = max(seen.values())
    return [a for a in workers if a in seen and newest - seen[a] > timeout]
