"""Rank failures folded into incidents: one failure, and the ranks it took down with it.

When one worker dies, every rank of its process group stops: the dead one (the
controller reports it) and the survivors, whose collectives fail for want of a peer
(each reports ``failed`` itself). Shown one line per :class:`~scalekit.events.RankStatus`
that was three red "rank N failed" lines for one killed worker. Here the ranks that
stopped in one *generation* (process group) make one :class:`Incident`:

- its **cause** is the rank that failed first-hand: the only ``failed`` one when the
  others say ``aborted`` (ranks that stopped because a peer did; robust to the runtime
  reporting that state), else the rank the controller's ``recovering: rank N <kind> ...``
  notice names, else the only rank that failed;
- the other ranks **stopped with it**: part of the recovery, not failures of their own;
- it is **open** until training goes on: a :class:`~scalekit.events.Recovered`, or a
  rank of a later generation training. Only open incidents are drawn as errors; a
  recovered one stays in the timeline as one entry.
"""

from __future__ import annotations

import dataclasses
import re

from scalekit.events import RankStatus

__all__ = ["ABORTED", "Incident", "Incidents", "RankInfo"]

ABORTED = "aborted"  # a rank that stopped because a peer failed
# the controller's notice: "recovering: rank 1 lost on tcp://...; restoring on 2 worker(s)"
_NOTICE = re.compile(r"^recovering: rank (\d+) (\w+)")


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """One rank as its last :class:`~scalekit.events.RankStatus` described it."""

    rank: int
    worker: str
    state: str
    generation: int = 0


@dataclasses.dataclass
class Incident:
    """The ranks of one generation that stopped, and which of them caused it.

    Attributes
    ----------
    generation : int
        The process group that broke.
    epoch, step : int
        Where training stood when the first rank reported (epochs completed, batches
        into the next one).
    time : float
        When the first rank reported.
    stopped : dict of int to RankInfo
        Every rank of the generation that reported ``failed`` or ``aborted``.
    named : int or None
        The rank the controller's ``recovering`` notice names.
    kind : str
        How it failed (``lost``, ``hung``, ... from the controller's notice), else
        ``failed``.
    open : bool
        True until training went on after it.
    """

    generation: int
    epoch: int
    step: int
    time: float
    stopped: dict[int, RankInfo] = dataclasses.field(default_factory=dict)
    named: int | None = None
    kind: str = "failed"
    open: bool = True

    @property
    def cause(self) -> int | None:
        """The rank that failed first-hand: the only one not ``aborted`` when some
        are, else the one the controller's notice ``named``, else the only rank that
        stopped; ``None`` when it cannot be told."""
        failed = [r for r, info in self.stopped.items() if info.state != ABORTED]
        if len(failed) == 1 and len(self.stopped) > 1:
            return failed[0]  # the runtime said which ranks only followed
        if self.named is not None:
            return self.named
        return failed[0] if len(self.stopped) == 1 and failed else None

    @property
    def root(self) -> RankInfo | None:
        """The cause's info (``None`` when the cause is unknown or did not report)."""
        return self.stopped.get(self.cause) if self.cause is not None else None

    @property
    def followers(self) -> list[int]:
        """Ranks that stopped because of the cause, sorted (all of them when unknown)."""
        return sorted(r for r in self.stopped if r != self.cause)

    def state_of(self, rank: int) -> str:
        """``failed`` for the cause (or any rank while the cause is unknown), else
        ``aborted``."""
        if self.cause is None or rank == self.cause:
            return "failed"
        return ABORTED

    @property
    def text(self) -> str:
        """One line: ``rank 1 on w1 lost (generation 1) · ranks 0, 2 stopped with it``."""
        g = f"(generation {self.generation})"
        if self.cause is None:
            ranks = self.followers
            if len(ranks) == 1:
                info = self.stopped[ranks[0]]
                return f"rank {info.rank} on {info.worker} {self.kind} {g}"
            return f"ranks {_ranks(ranks)} stopped {g}"
        root = self.root
        where = f" on {root.worker}" if root is not None and root.worker else ""
        text = f"rank {self.cause}{where} {self.kind} {g}"
        others = self.followers
        if others:
            text += (f" · {'rank' if len(others) == 1 else 'ranks'} {_ranks(others)} "
                     "stopped with it")
        return text


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


@dataclasses.dataclass
class Incidents:
    """Every incident of a run, by generation."""

    by_generation: dict[int, Incident] = dataclasses.field(default_factory=dict)

    def rank(self, event: RankStatus, position: tuple[int, int]) -> Incident | None:
        """Fold a rank's status in; return the incident it changed, if any.

        ``failed`` and ``aborted`` join their generation's incident; ``training`` in a
        later generation closes the older ones (the next round trains).
        """
        if event.state == "training":
            self.resolve(before=event.generation)
            return None
        if event.state not in ("failed", ABORTED):
            return None
        incident = self._incident(event.generation, position, event.time)
        known = incident.stopped.get(event.rank)
        if known is not None and known.state != ABORTED and event.state == ABORTED:
            return None  # the controller's "failed" for this rank says more
        incident.stopped[event.rank] = RankInfo(event.rank, event.worker, event.state,
                                                event.generation)
        return incident

    def notice(self, message: str, generation: int, position: tuple[int, int],
               when: float) -> Incident | None:
        """The controller's ``recovering: rank N <kind> ...`` notice names the cause."""
        found = _NOTICE.match(message)
        if found is None:
            return None
        opened = [i for i in self.by_generation.values() if i.open]
        incident = (max(opened, key=lambda i: i.generation) if opened
                    else self._incident(generation, position, when))
        incident.named, incident.kind = int(found.group(1)), found.group(2)
        return incident

    def resolve(self, before: int | None = None) -> list[Incident]:
        """Training went on: close the open incidents (those of generations before
        ``before`` only, when given); return those closed."""
        closed = [i for i in self.by_generation.values()
                  if i.open and (before is None or i.generation < before)]
        for incident in closed:
            incident.open = False
        return closed

    @property
    def open(self) -> list[Incident]:
        """Incidents training has not gone on from yet, oldest first."""
        return [i for _, i in sorted(self.by_generation.items()) if i.open]

    def state_of(self, info: RankInfo) -> str:
        """The state a rank chip shows: a stopped rank is ``failed`` or ``aborted``."""
        incident = self.by_generation.get(info.generation)
        if incident is None or info.rank not in incident.stopped:
            return info.state
        return incident.state_of(info.rank)

    def _incident(self, generation: int, position: tuple[int, int], when: float) -> Incident:
        incident = self.by_generation.get(generation)
        if incident is None:
            incident = self.by_generation[generation] = Incident(
                generation, int(position[0]), int(position[1]), when)
        return incident
