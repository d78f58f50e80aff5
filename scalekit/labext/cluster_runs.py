"""The cluster's runs, for the sidebar: fits recorded on the cluster by other kernels,
the command line or a detached submission, followed as this kernel's own are.

The run registry on the scheduler (:mod:`scalekit.training.run_registry`) records every
fit on the cluster and keeps its events. :class:`ClusterRuns` asks it for the list at
most every :data:`POLL_S` seconds, then for each run this kernel does not drive asks for
the events since the last ones it has (a cursor per run) and folds them into a
:class:`~scalekit.views.training_state.TrainingState`: the fold the panels and the
kernel's own sidebar cards use, so a card of another kernel's run reads the same.

It runs on the lab bridge's pump thread; every call to the scheduler is a short
request/response, and a cluster that does not answer leaves the last list as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from typing import Any

from scalekit.views.snapshot import run_dict
from scalekit.views.training_state import TrainingState

logger = logging.getLogger(__name__)

POLL_S = 2.0  # the list and news of the cluster's runs, at most this often
MAX_RUNS = 10  # runs shown from the cluster (the running ones first, then the newest)

# (operation, keyword arguments) -> the scheduler's answer, or None where it has none
Call = Callable[..., Any]

__all__ = ["MAX_RUNS", "POLL_S", "ClusterRuns"]


class _Followed:
    """One run of the cluster: its registry record, its folded events, a cursor."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.state = TrainingState(run_id=str(record["run_id"]))
        self.cursor = 0


class ClusterRuns:
    """The runs recorded on one cluster that this kernel does not drive.

    Parameters
    ----------
    call : callable
        ``call(op, **kwargs)``: the scheduler's answer to a registry operation
        (``scalekit_runs_list``, ``scalekit_runs_events``), ``None`` where it gave none.
    clock : callable
        Monotonic seconds (tests pass a fake clock).
    """

    def __init__(self, call: Call, *, clock: Callable[[], float] = time.monotonic,
                 poll_s: float = POLL_S, max_runs: int = MAX_RUNS) -> None:
        self._call = call
        self._clock = clock
        self.poll_s = poll_s
        self.max_runs = max_runs
        self._followed: dict[str, _Followed] = {}
        self._last_poll: float | None = None

    def due(self) -> bool:
        return self._last_poll is None or self._clock() - self._last_poll >= self.poll_s

    def poll(self, own: Container[str] = ()) -> bool:
        """Catch up with the cluster (if a poll is due); ``own``: the run ids this
        kernel drives (its sidebar shows those already). Returns whether anything shown
        changed."""
        if not self.due():
            return False
        self._last_poll = self._clock()
        listed = self._call("scalekit_runs_list")
        if not isinstance(listed, (list, tuple)):  # Dask's comms answer a list as a tuple
            return False  # no registry (yet), or no answer: keep what is shown
        others = [r for r in listed if isinstance(r, dict) and r.get("run_id")
                  and r["run_id"] not in own]
        # running first, then the newest: what is worth a card
        others.sort(key=lambda r: (r.get("state") not in ("running", "submitted",
                                                           "cancelling"),
                                   -(r.get("started") or 0.0)))
        keep = others[:self.max_runs]
        changed = set(self._followed) != {r["run_id"] for r in keep}
        followed: dict[str, _Followed] = {}
        for record in keep:
            run_id = str(record["run_id"])
            run = self._followed.get(run_id) or _Followed(record)
            changed |= run.record != record
            run.record = record
            changed |= self._catch_up(run)
            followed[run_id] = run
        self._followed = followed
        return changed

    def _catch_up(self, run: _Followed) -> bool:
        if run.state.status in ("finished", "failed", "cancelled") and run.cursor:
            return False  # over: nothing more will come
        news = self._call("scalekit_runs_events", run_id=run.state.run_id,
                          since=run.cursor)
        if not isinstance(news, dict):
            return False
        events = news.get("events") or []
        from scalekit.events import event_from_dict

        for data in events:
            try:
                run.state.apply(event_from_dict(data))
            except (ValueError, TypeError, KeyError):
                logger.debug("skipping an event of run %s: %r", run.state.run_id, data)
        run.cursor = int(news.get("next", run.cursor))
        return bool(events)

    def runs(self) -> list[dict[str, Any]]:
        """The snapshot part: :func:`~scalekit.views.snapshot.run_dict` of each run
        followed, oldest first like the kernel's own, with who started it and how to
        attach to it."""
        shown = sorted(self._followed.values(),
                       key=lambda r: r.record.get("started") or 0.0)
        return [_cluster_run_dict(r) for r in shown]


def _cluster_run_dict(run: _Followed) -> dict[str, Any]:
    record = run.record
    data = run_dict(run.state)
    state = str(record.get("state") or data["status"])
    if data["status"] == "waiting" and state != "waiting":
        data["status"] = state  # e.g. "submitted": recorded, no event yet
    owner = str(record.get("owner") or "?")
    how = "detached" if record.get("detached") else "from a kernel"
    data.update(
        origin="cluster", owner=owner, net=str(record.get("net") or ""),
        detached=bool(record.get("detached")),
        attach=f'sk.attach("{run.state.run_id}")',
    )
    view = dict(data["view"])
    view["details"] = [f"{record.get('net') or 'a net'} · {how} · by {owner}",
                       *view["details"],
                       f'follow it: sk.attach("{run.state.run_id}")']
    data["view"] = view
    return data
