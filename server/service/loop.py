"""The engine loop: schedule -> execute -> update, between the sessions and the engine thread.

How this works
--------------
Sessions hand jobs to :meth:`EngineLoop.submit`, which queues them in the
:class:`~server.core.scheduler.Scheduler` and wakes the loop (an ``asyncio.Event``: no
polling). The loop takes the next batch, hands it to the :class:`~server.engine.Engine`
worker thread and awaits the future; meanwhile new jobs keep arriving and drafts keep
being replaced, so the next batch is formed from the freshest work. Results go to the
``deliver`` callback, which only updates in-memory state and queues messages: the loop
never waits on a socket.

A failed batch of several jobs is not failed wholesale: its finals are retried, each
alone, and only a final that fails on its own is reported as failed. Drafts of a failed
batch are dropped (a newer draft will follow). One batch is in flight at a time, which
keeps the device busy while leaving the scheduler free to reorder what waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.core.scheduler import Job, JobKind, Scheduler
from server.engine import Engine, TranscribeResult

__all__ = ["EngineLoop", "LoopStats"]

log = logging.getLogger("dgasr.loop")

Deliver = Callable[[Job, TranscribeResult | None, BaseException | None], None]


@dataclass
class LoopStats:
    """Where the time goes; recent samples only (bounded)."""

    batches: int = 0
    jobs: int = 0
    failed_batches: int = 0
    queue_wait_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    engine_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=4096))


class EngineLoop:
    def __init__(self, engine: Engine, scheduler: Scheduler, max_batch: int, deliver: Deliver,
                 on_batch: Callable[[int, list[float], float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.scheduler = scheduler
        self.max_batch = max_batch
        self._deliver = deliver
        self._on_batch = on_batch  # (size, each job's queue wait, device seconds): the metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self._submitted: dict[int, float] = {}
        self.stats = LoopStats()

    def submit(self, jobs: list[Job]) -> None:
        now = time.perf_counter()
        try:
            for job in jobs:
                replaced = self.scheduler.submit(job)
                self._submitted[job.id] = now
                if replaced is not None:
                    self._submitted.pop(replaced.id, None)
        finally:
            if jobs:
                self._wake.set()  # even if the scheduler refused one: the queued ones must run

    def forget_session(self, session: str) -> int:
        """Drop the waiting jobs of a session that went away; returns how many."""
        removed = self.scheduler.remove_session(session)
        for job in removed:
            self._submitted.pop(job.id, None)
        return len(removed)

    def stop(self) -> None:
        """Finish what is queued, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            batch = self.scheduler.next_batch(self.max_batch)
            if not batch:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._execute(batch)

    async def _execute(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        waits = [start - self._submitted.pop(job.id, start) for job in batch]
        self.stats.queue_wait_ms.extend(w * 1000 for w in waits)
        try:
            future = self.engine.submit([job.request for job in batch])
            results = await asyncio.wrap_future(future)
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed_batches += 1
            self._on_failure(batch, exc)
            return
        finally:
            self.stats.batches += 1
            self.stats.jobs += len(batch)
            self.stats.batch_sizes.append(len(batch))
            seconds = time.perf_counter() - start
            self.stats.engine_ms.append(seconds * 1000)
            if self._on_batch is not None:
                self._on_batch(len(batch), waits, seconds)
        for job, result in zip(batch, results):
            self._safe_deliver(job, result, None)

    def _on_failure(self, batch: list[Job], exc: Exception) -> None:
        finals = [j for j in batch if j.kind is JobKind.FINAL]
        if len(batch) > 1 and finals:
            log.warning("batch of %d failed (%s); retrying its %d finals one by one", len(batch), exc, len(finals))
            for job in finals:
                job.attempts += 1
                self._submitted[job.id] = time.perf_counter()
            self.scheduler.retry(finals)
            failed = [j for j in batch if j.kind is JobKind.DRAFT]
        else:
            failed = batch
        for job in failed:
            self._safe_deliver(job, None, exc)

    def _safe_deliver(self, job: Job, result: TranscribeResult | None, error: BaseException | None) -> None:
        try:
            self._deliver(job, result, error)
        except Exception:  # a broken session must not stop everyone else's results
            log.exception("delivering job %d of session %s failed", job.id, job.session)
