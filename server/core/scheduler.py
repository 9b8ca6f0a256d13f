"""The scheduler: which transcription jobs go into the engine's next batch (pure logic).

How this works
--------------
Sessions submit :class:`Job` objects: a *final* for every closed segment and a *draft*
for an open one. Finals wait in one FIFO and are never dropped. Drafts are kept at
most one per session: a newer draft replaces the pending one (the client wants the
freshest partial, not a backlog), and a session's pending draft is discarded as soon as
that session submits a final for the same segment (the partial could no longer be sent).

:meth:`Scheduler.next_batch` fills a batch of at most ``max_batch`` jobs: finals first,
then drafts. Within each kind it is **fair across sessions by device cost**, not by
arrival: every job taken charges its session its step count, and the next batch starts
from the session charged least (ties: oldest job). That first job's step count is the
batch's ceiling: others join only if they need no more steps, because a batch returns
when its longest row is done, and one client asking for 64-step finals would otherwise
hold every 8-step final batched with it (a 2-step draft joining a 16-step batch loses
nothing: it would otherwise wait for that batch anyway). So a session's
share of the device does not grow with the steps it asks for, and a session that was
quiet is not owed a burst (it rejoins at the lowest charge of the sessions waiting).
A session's own finals keep their order.

Where a batch costs about the sum of its rows (an engine on CPU threads: rows of different
encoder buckets are encoded one after another, and even rows of one bucket share little),
a draft riding with a final only delays the final by the draft's whole cost; with
``drafts_with_finals=False`` a batch that has finals takes no drafts (the server sets it
for an engine on CPU). On a GPU extra rows are nearly free, and they ride along. For the
same reason ``max_drafts`` caps the drafts of one batch on CPU threads: eight drafts batched
save nothing there and hold a final that comes in meanwhile for all eight.

A draft that brings a segment up to date at a pause (``catch_up``: the speaker stopped, the
segment's whole speech is in it) goes before other drafts: the final follows it within the
VAD's silence, and unless it runs first the caption lags the speaker by its last words
until then.

If the engine fails a batch, the loop calls :meth:`retry` with the finals of that batch;
they go back to the front of the queue marked for a batch of their own, so one poisoned
request cannot keep failing others.

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
CPU_DRAFTS_PER_BATCH = 1  # drafts in one batch of an engine on CPU threads (Scheduler.for_device)


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
    catch_up: bool = False  # a draft of all the segment's speech, at a pause: before other drafts
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
        drafts_with_finals: whether drafts may fill a batch that has finals (see above).
        max_drafts: most drafts in one batch (None: as many as ``max_batch`` allows).
    """

    def __init__(self, max_finals: int = 4096, drafts_with_finals: bool = True, max_drafts: int | None = None) -> None:
        if max_drafts is not None and max_drafts < 1:
            raise ValueError("max_drafts must be at least 1")
        self._finals: OrderedDict[Hashable, deque[Job]] = OrderedDict()  # per session, in its order
        self._retries: deque[Job] = deque()  # finals of a failed batch, each to run alone
        self._drafts: OrderedDict[Hashable, Job] = OrderedDict()
        self._charged: dict[Hashable, int] = {}  # steps of device work taken per session
        self._final_count = 0
        self.max_finals = max_finals
        self.drafts_with_finals = drafts_with_finals
        self.max_drafts = max_drafts
        self.dropped_drafts = 0

    @classmethod
    def for_device(cls, cpu: bool) -> Scheduler:
        """The server's scheduler for an engine on CPU threads or on an accelerator. On CPU
        threads a batch costs the sum of its rows, so finals go without drafts riding along
        and drafts go :data:`CPU_DRAFTS_PER_BATCH` at a time: a final that arrives meanwhile
        waits for one draft, not sixteen (demo model, 2 cores, 8 unhinted clients: final p95
        2,738 -> 1,610 ms; ``scripts/bench_streams.py``)."""
        return cls(drafts_with_finals=False, max_drafts=CPU_DRAFTS_PER_BATCH) if cpu else cls()

    def __len__(self) -> int:
        return self._final_count + len(self._drafts)

    @property
    def pending_finals(self) -> int:
        return self._final_count

    def charged(self, session: Hashable) -> int:
        """Steps of device work this session has been given so far."""
        return self._charged.get(session, 0)

    def submit(self, job: Job) -> Job | None:
        """Queue ``job``; returns the draft it replaced or discarded, if any."""
        self._join(job.session)
        if job.kind is JobKind.FINAL:
            if self._final_count >= self.max_finals:
                raise SchedulerFull(f"{self._final_count} finals waiting (bound {self.max_finals})")
            self._finals.setdefault(job.session, deque()).append(job)
            self._final_count += 1
            stale = self._drafts.get(job.session)
            if stale is not None and stale.segment <= job.segment:
                del self._drafts[job.session]
                self.dropped_drafts += 1
                return stale
            return None
        replaced = self._drafts.pop(job.session, None)
        if replaced is not None:
            self.dropped_drafts += 1
        self._drafts[job.session] = job
        return replaced

    def next_batch(self, max_batch: int) -> list[Job]:
        """Up to ``max_batch`` jobs: finals, then drafts, least-charged sessions first, none above the first's steps."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self._retries:
            job = self._retries.popleft()
            self._final_count -= 1
            self._charge(job)
            return [job]
        if self._finals:
            heads = {session: queue[0] for session, queue in self._finals.items()}
            ceiling = heads[self._order(heads)[0]].request.steps
        elif self._drafts:
            ceiling = self._drafts[self._draft_order()[0]].request.steps
        else:
            return []
        batch = self._take_finals(max_batch, ceiling)
        if batch and not self.drafts_with_finals:
            return batch
        room = max_batch - len(batch)
        return batch + self._take_drafts(room if self.max_drafts is None else min(room, self.max_drafts), ceiling)

    def retry(self, finals: Iterable[Job]) -> None:
        """Put finals of a failed batch back at the front, each to run alone next time."""
        for job in reversed(list(finals)):
            job.alone = True
            self._retries.appendleft(job)
            self._final_count += 1

    def remove_session(self, session: Hashable) -> list[Job]:
        """Forget every waiting job of ``session`` (it disconnected) and its charge; returns the jobs."""
        removed = [j for j in self._retries if j.session == session]
        if removed:
            self._retries = deque(j for j in self._retries if j.session != session)
        removed += self._finals.pop(session, deque())
        self._final_count -= len(removed)
        draft = self._drafts.pop(session, None)
        if draft is not None:
            removed.append(draft)
        self._charged.pop(session, None)
        return removed

    # ---- fairness ----------------------------------------------------------

    def _waiting(self) -> set[Hashable]:
        return set(self._finals) | set(self._drafts)

    def _join(self, session: Hashable) -> None:
        """A session with nothing queued rejoins at the lowest charge among those waiting."""
        if session in self._finals or session in self._drafts:
            return
        waiting = [self._charged.get(s, 0) for s in self._waiting()]
        if waiting:
            self._charged[session] = max(self._charged.get(session, 0), min(waiting))

    def _charge(self, job: Job) -> None:
        self._charged[job.session] = self._charged.get(job.session, 0) + job.request.steps

    def _order(self, heads: dict[Hashable, Job]) -> list[Hashable]:
        return sorted(heads, key=lambda s: (self._charged.get(s, 0), heads[s].id))

    def _draft_order(self) -> list[Hashable]:
        """Catch-up drafts first, then by charge; the sort is stable, so equal keys keep queue
        order (a replaced draft went to the back)."""
        return sorted(self._drafts, key=lambda s: (not self._drafts[s].catch_up, self._charged.get(s, 0)))

    def _take_finals(self, max_batch: int, ceiling: int) -> list[Job]:
        batch: list[Job] = []
        while len(batch) < max_batch:
            ready = [s for s, q in self._finals.items() if q[0].request.steps <= ceiling]
            if not ready:
                break
            session = min(ready, key=lambda s: (self._charged.get(s, 0), self._finals[s][0].id))
            queue = self._finals[session]
            job = queue.popleft()
            if not queue:
                del self._finals[session]
            self._final_count -= 1
            self._charge(job)
            batch.append(job)
        return batch

    def _take_drafts(self, max_batch: int, ceiling: int) -> list[Job]:
        batch: list[Job] = []
        for session in self._draft_order():
            if len(batch) == max_batch:
                break
            if self._drafts[session].request.steps <= ceiling:
                job = self._drafts.pop(session)
                self._charge(job)
                batch.append(job)
        return batch
