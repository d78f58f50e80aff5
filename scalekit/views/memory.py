"""The cluster's memory against the machine's: the real total, and overcommitted limits.

Dask's ``memory_limit="auto"`` gives each worker the machine's memory divided by the
number of workers *first started*; workers added later get the same limit. After
scaling a 2-worker cluster to 4 on a 23.5 GiB machine, the limits add up to 47 GiB and
the panel said "0.25 / 47.08 GiB": a total the machine does not have. The views show
the machine's real total when they know it, and warn when the limits overcommit it
(workers would be killed by the OS before Dask spills or pauses them).

Where the machine's total comes from: the snapshot does not carry it (yet). For a
cluster whose workers all run on this machine (the local backend, loopback
addresses), it is this process's machine: :func:`local_machine_memory` reads it with
psutil. For remote workers it is unknown and nothing is claimed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from scalekit.events import ClusterSnapshot
from scalekit.views.fmt import GIB, gib

__all__ = ["MemoryView", "local_machine_memory", "memory_view"]

LOOPBACK = ("127.", "localhost", "[::1]", "::1")
OVERCOMMIT = 1.01  # limits above the machine by more than rounding


def _host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def _on_this_machine(snapshot: ClusterSnapshot) -> bool:
    if not snapshot.workers:
        return snapshot.backend == "local"
    return all(w.address.startswith("inproc://") or _host(w.address).startswith(LOOPBACK)
               for w in snapshot.workers)


def _psutil_total() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # no psutil, or no /proc: say nothing rather than guess
        return None


def local_machine_memory(snapshot: ClusterSnapshot,
                         read: Callable[[], int | None] | None = None) -> int | None:
    """This machine's memory in bytes when every worker of ``snapshot`` runs here
    (loopback or in-process addresses), else ``None``; ``read`` replaces psutil."""
    if not _on_this_machine(snapshot):
        return None
    return (read or _psutil_total)()


@dataclasses.dataclass(frozen=True)
class MemoryView:
    """The memory figures a view shows.

    Attributes
    ----------
    used, limits : int
        Bytes the workers use, and the sum of their limits (0: no limits).
    machine : int or None
        The machine's memory, when the workers all run on one known machine.
    workers : int
        How many workers have a limit (for the size suggested in :attr:`warning`).
    """

    used: int
    limits: int
    machine: int | None
    workers: int = 0

    @property
    def total(self) -> int:
        """What the used memory is out of: the machine when known, else the limits."""
        if self.machine:
            return min(self.machine, self.limits) if self.limits else self.machine
        return self.limits

    @property
    def overcommit(self) -> float | None:
        """``limits / machine`` when the limits exceed the machine, else ``None``."""
        if not self.machine or not self.limits or self.limits <= self.machine * OVERCOMMIT:
            return None
        return self.limits / self.machine

    @property
    def text(self) -> str:
        """``"0.25 / 23.50 GiB (this machine; limits 47.08 GiB)"``, or used of the
        limits when the machine is unknown."""
        if self.machine:
            text = f"{gib(self.used)} / {gib(self.total)} GiB"
            if self.limits > self.machine * OVERCOMMIT:
                return f"{text} (this machine; limits {gib(self.limits)} GiB)"
            return text if self.limits else f"{text} (this machine; no limit)"
        if not self.limits:
            return f"{gib(self.used)} GiB (no limit)"
        return f"{gib(self.used)} / {gib(self.limits)} GiB"

    @property
    def short(self) -> str:
        """The status bar's ``"0.3/23.5 GiB"`` (one decimal)."""
        total = self.total
        used = f"{self.used / 2**30:.1f}"
        return f"{used}/{total / 2**30:.1f} GiB" if total else f"{used} GiB"

    @property
    def fitting_limit(self) -> str:
        """A per-worker limit that fits the machine: its share, rounded down to half a
        GiB (at least half a GiB), as ``"7.5GiB"``."""
        share = (self.machine or 0) / max(self.workers, 1) / GIB
        return f"{max(math.floor(share * 2) / 2, 0.5):g}GiB"

    @property
    def warning(self) -> str | None:
        """Why the limits are a problem and what to do, when they overcommit."""
        ratio = self.overcommit
        if ratio is None:
            return None
        size = self.fitting_limit
        return (f"memory limits add up to {gib(self.limits)} GiB, {ratio:.1f}× this "
                f"machine's {gib(self.machine or 0)} GiB: a worker may be killed before "
                f"Dask spills. Give each at most {size}: sk.cluster(memory_limit="
                f"'{size}') or %scalekit up --memory-limit {size}")


def memory_view(snapshot: ClusterSnapshot, machine: int | None = None) -> MemoryView:
    """The memory of ``snapshot``'s workers against ``machine`` bytes (``None``:
    unknown, figures of the limits only)."""
    return MemoryView(used=snapshot.total_memory, limits=snapshot.total_memory_limit,
                      machine=machine if machine and machine > 0 else None,
                      workers=sum(1 for w in snapshot.workers if w.memory_limit))
