"""Which workers a fit's rounds train on: waiting for some, leaving out those that stopped
answering, and for a cuda net a GPU of its own for every rank."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from scalekit.config import TrainConfig
from scalekit.errors import TrainingError
from scalekit.events import EventBus, Notice
from scalekit.training import devices
from scalekit.training.worker_ops import SILENT_FACTOR, kill_local_or_restart, unresponsive

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)


class WorkerPool:
    """The cluster's workers as one fit sees them.

    Attributes
    ----------
    device_type : str
        ``"cpu"`` or ``"cuda"``: where the net computes (:meth:`configure`).
    backend : str
        The process group's backend (``"gloo"``, ``"cpu:gloo,cuda:nccl"``).
    gpu_index : dict
        Each placed worker's CUDA index (cuda nets).
    """

    def __init__(self, client: Client, bus: EventBus, config: TrainConfig) -> None:
        self.client = client
        self.bus = bus
        self.config = config
        self.device_type = "cpu"
        self.backend = "gloo"
        self.gpu_index: dict[str, int] = {}
        self._devices: dict[str, devices.WorkerDevices] = {}  # GPU inventory per worker
        self._sitting_out: set[str] = set()  # workers a cuda fit cannot place (announced)

    def configure(self, net_device: Any) -> None:
        """Compute where ``net_device`` says; check the precision against it."""
        self.device_type = devices.device_type(net_device)
        devices.check_precision(self.config.precision, self.device_type)
        self.backend = devices.process_group_backend(self.config.backend, self.device_type)

    def devices_of(self, workers: list[str]) -> tuple[int, ...] | None:
        """Each rank's CUDA index, in rank order (``None`` for a CPU net)."""
        if self.device_type != "cuda":
            return None
        return tuple(self.gpu_index[w] for w in workers)

    # -- waiting -------------------------------------------------------------------------
    def wait(self, placeable: bool = True) -> list[str]:
        """The workers a round can use now, in rank order (waiting while there are
        none, up to ``wait_for_workers``)."""
        deadline = time.monotonic() + self.config.wait_for_workers
        announced = False
        while True:
            workers = sorted(self.client.nthreads())
            if placeable:
                workers = self.placeable(self.responsive(workers))
            if workers:
                return workers
            if not announced:
                self.bus.publish(Notice(level="warning", message=(
                    "waiting for workers: the cluster has none "
                    f"(up to {self.config.wait_for_workers:g}s)")))
                announced = True
            if time.monotonic() > deadline:
                raise TrainingError(
                    f"the cluster has no workers after {self.config.wait_for_workers:g}s; "
                    "scale it up (session.scale(2) or %scalekit scale 2) and fit again"
                )
            time.sleep(0.2)

    def wait_for_count(self, n: int, timeout: float = 60.0) -> None:
        """Until at most ``n`` workers are left (after a planned shrink)."""
        deadline = time.monotonic() + timeout
        while len(self.client.nthreads()) > n and time.monotonic() < deadline:
            time.sleep(0.1)

    def responsive(self, workers: list[str]) -> list[str]:
        """``workers`` without those that stopped answering (their heartbeats stopped
        before the others'): those are ended (their nanny starts fresh ones) instead of
        being made ranks of a round that would wait for them."""
        timeout = SILENT_FACTOR * self.config.hang_timeout
        try:
            silent = unresponsive(self.client, workers, timeout)
        except Exception:  # a scheduler hiccup: judge them at the round's set-up
            return workers
        for address in silent:
            logger.warning("ending worker %s: no heartbeat for over %gs", address, timeout)
            kill_local_or_restart(self.client, address, None)
        return [w for w in workers if w not in silent]

    def in_process(self) -> bool:
        """Whether the workers are threads of this process (``processes=False``)."""
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers") or {}
            if any(w.get("nanny") for w in workers.values()):
                return False  # worker processes (asking them could wait on a stopped one)
            pids = self.client.run(os.getpid)
        except Exception:
            return False
        return bool(pids) and all(pid == os.getpid() for pid in pids.values())

    # -- devices -------------------------------------------------------------------------
    def placeable(self, workers: list[str]) -> list[str]:
        """``workers`` that can take a rank of this fit, in order.

        Every worker can take a CPU net's rank. A cuda net's ranks need a GPU each:
        workers without one, or whose GPUs are taken by other ranks on their host, sit
        this fit out (announced once each); the GPU each placed worker uses is kept for
        the round's spec.
        """
        if self.device_type != "cuda":
            return workers
        index, left_out = devices.assign_gpus(self.inventory(workers))
        for worker, reason in left_out.items():
            if worker not in self._sitting_out:
                self._sitting_out.add(worker)
                self.bus.publish(Notice(level="warning",
                                        message=f"{reason}; it sits this fit out"))
        self.gpu_index.update(index)
        return [w for w in workers if w in index]

    def joinable(self, current: list[str], joining: list[str]) -> list[str]:
        """The ``joining`` workers that can take a rank beside the ``current`` ones (a
        new worker whose only GPU a current rank holds cannot)."""
        placed = set(self.placeable([*current, *joining]))
        return [w for w in joining if w in placed]

    def inventory(self, workers: list[str]) -> list[devices.WorkerDevices]:
        """What each worker can compute on (asked once per worker, then remembered)."""
        missing = [w for w in workers if w not in self._devices]
        if missing:
            found = self.client.run(devices.worker_devices, workers=missing,
                                    on_error="return")
            for worker, info in found.items():
                if isinstance(info, devices.WorkerDevices):
                    self._devices[worker] = info
        return [self._devices[w] for w in workers if w in self._devices]

    def check_placement(self, workers: list[str]) -> None:
        """Before a cuda fit starts: every worker gets a GPU of its own, and NCCL."""
        inventory = self.inventory(workers)
        _, left_out = devices.assign_gpus(inventory)
        if left_out:
            raise devices.placement_error(left_out, len(workers))
        if self.backend != "gloo":
            without = [w.worker for w in inventory if not w.nccl]
            if without:
                raise devices.nccl_error(without)
