"""The scheduler: which transcription jobs go into the engine's next batch (pure logic).

How this works
--------------
Sessions submit :class:`Job` objects: a *final* for every closed segment and a *draft*
for an open one. Finals wait in one FIFO and are never dropped. Drafts are kept at
most one per session: a newer draft replaces the pending one (the client wants the
freshest partial, not a backlog), and a session's pending draft is discarded as soon as
that session submits a final for the same segment (the partial could no longer be sent).

:meth:`Scheduler.next_batch` fills a batch of at most ``max_batch`` jobs: finals first,
oldest first, then drafts, oldest first. If the engine fails a batch, the loop calls
:meth:`retry` with the finals of that batch; they go back to the front of the queue
marked for a batch of their own, so one poisoned request cannot keep failing others.

No clocks, no asyncio, no model: the tests drive it with hand-made jobs.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from server.core.requests import TranscribeRequest

__all__ = ["Job", "JobKind", "Scheduler", "SchedulerFull"]

_ids = itertools.count()


class JobKind(enum.Enum):
    DRAFT = "draft"
    FINAL = "final"


@dataclass(eq=False)
class Job:
    """One request for the engine, tagged with who asked and why."""

    session: Hashable
    segment: int
    kind: JobKind
    request: TranscribeRequest
    end: int = 0  # stream sample position the job's audio reaches (drafts)
    attempts: int = 0
    alone: bool = False  # retry in a batch of its own
    id: int = field(default_factory=lambda: next(_ids))


class SchedulerFull(RuntimeError):
    """More finals are waiting than the scheduler is allowed to hold."""


class Scheduler:
    """Bounded queues of finals (FIFO, never dropped) and drafts (newest per session).

    Args:
        max_finals: bound on waiting finals; sessions apply backpressure well before it
            (each has a small cap of its own), so hitting it is a bug, reported loudly.
    """

    def __init__(self, max_finals: int = 4096) -> None:
        self._finals: deque[Job] = deque()
        self._drafts: OrderedDict[Hashable, Job] = OrderedDict()
        self.max_finals = max_finals
        self.dropped_drafts = 0

    def __len__(self) -> int:
        return len(self._finals) + len(self._drafts)

    @property
    def pending_finals(self) -> int:
        return len(self._finals)

    def submit(self, job: Job) -> Job | None:
        """Queue ``job``; returns the draft it replaced or discarded, if any."""
        if job.kind is JobKind.FINAL:
            if len(self._finals) >= self.max_finals:
                raise SchedulerFull(f"{len(self._finals)} finals waiting (bound {self.max_finals})")
            self._finals.append(job)
            stale = self._drafts.get(job.session)
            if stale is not None and stale.segment <= job.segment:
                del self._drafts[job.session]
                self.dropped_drafts += 1
                return stale
            return None
        replaced = self._drafts.pop(job.session, None)
        if replaced is not None:
            self.dropped_drafts += 1
        self._drafts[job.session] = job  # re-inserted at the end: oldest-first stays fair
        return replaced

    def next_batch(self, max_batch: int) -> list[Job]:
        """Take up to ``max_batch`` jobs: finals first (FIFO), then drafts (oldest first)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self._finals and self._finals[0].alone:
            return [self._finals.popleft()]
        batch: list[Job] = []
        while self._finals and len(batch) < max_batch and not self._finals[0].alone:
            batch.append(self._finals.popleft())
        while self._drafts and len(batch) < max_batch:
            _, job = self._drafts.popitem(last=False)
            batch.append(job)
        return batch

    def retry(self, finals: Iterable[Job]) -> None:
        """Put finals of a failed batch back at the front, each to run alone next time."""
        for job in reversed(list(finals)):
            job.alone = True
            self._finals.appendleft(job)

    def remove_session(self, session: Hashable) -> list[Job]:
        """Forget every waiting job of ``session`` (it disconnected); returns them."""
        removed = [j for j in self._finals if j.session == session]
        if removed:
            self._finals = deque(j for j in self._finals if j.session != session)
        draft = self._drafts.pop(session, None)
        if draft is not None:
            removed.append(draft)
        return removed
