"""Tests for server.service.loop: the engine loop's batching, failure isolation, wake-up and shutdown.

The engine here is a fake on purpose: these tests are about what the loop does with a
runner whose failures and timing the test controls (a "poison" request that fails any
batch it is in, results from another thread or at once). The real engine, its threads
and its futures are tested in test_engine.py; a model cannot be made to fail on cue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import pytest

from server.core.scheduler import Job, JobKind, Scheduler
from server.engine import EngineError, PhaseTimings, TranscribeRequest, TranscribeResult
from server.service.loop import EngineLoop

POISON = 666
FINAL, DRAFT = JobKind.FINAL, JobKind.DRAFT


class FakeEngine:
    """``submit(requests) -> Future`` like :class:`server.engine.Engine`, recording each batch.

    Args:
        threaded: resolve futures from a worker thread (as the real engine does) instead
            of before ``submit`` returns.
        raise_on_submit: a poisoned batch raises from ``submit`` itself (as a request
            the engine refuses up front would) instead of failing its future.
    """

    def __init__(self, threaded: bool = False, raise_on_submit: bool = False) -> None:
        self.threaded = threaded
        self.raise_on_submit = raise_on_submit
        self.batches: list[list[int]] = []  # seeds of each submitted batch
        self.gate = threading.Event()  # threaded mode waits for it before resolving
        self.gate.set()

    def submit(self, requests: Sequence[TranscribeRequest]) -> concurrent.futures.Future:
        seeds = [r.seed for r in requests]
        self.batches.append(seeds)
        if self.raise_on_submit and POISON in seeds:
            raise EngineError("poisoned batch refused")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def resolve() -> None:
            self.gate.wait(5)
            if POISON in seeds:
                future.set_exception(EngineError(f"poisoned batch of {len(seeds)}"))
            else:
                timings = PhaseTimings(0.0, 0.0, 0.0, 1.0, len(seeds))
                results = [TranscribeResult(f"text {s}", (s,), r.steps, timings) for s, r in zip(seeds, requests)]
                future.set_result(results)

        if self.threaded:
            threading.Thread(target=resolve, daemon=True).start()
        else:
            resolve()
        return future


class CountingScheduler(Scheduler):
    """Counts next_batch calls: a polling loop would call it over and over while idle."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    def next_batch(self, max_batch: int) -> list[Job]:
        self.polls += 1
        return super().next_batch(max_batch)


class Recorder:
    """The loop's ``deliver`` callback: records (seed, text or None, error) per delivery."""

    def __init__(self, fail_for: Callable[[Job], bool] = lambda job: False) -> None:
        self.fail_for = fail_for
        self.deliveries: list[tuple[Job, TranscribeResult | None, BaseException | None]] = []
        self.arrived = asyncio.Event()

    def __call__(self, job: Job, result: TranscribeResult | None, error: BaseException | None) -> None:
        self.deliveries.append((job, result, error))
        self.arrived.set()
        if self.fail_for(job):
            raise RuntimeError(f"session of job {job.id} is broken")

    @property
    def seeds(self) -> list[tuple[int, str]]:
        return [(j.request.seed, "ok" if r is not None else "failed") for j, r, _ in self.deliveries]


def job(seed: int, kind: JobKind = FINAL, session: str | None = None) -> Job:
    request = TranscribeRequest(np.zeros(16, np.float32), 16 if kind is FINAL else 2, seed=seed)
    return Job(session or f"s{seed}", 0, kind, request)


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(main, timeout=5))


async def drained(loop: EngineLoop) -> None:
    """Let ``loop.run()`` work through everything queued, then return once it has stopped."""
    loop.stop()
    await loop.run()


@pytest.mark.parametrize("mode", ["immediate", "threaded", "raise"])
def test_loop_isolates_poison_final_when_batch_fails(mode: str) -> None:
    """Good finals of a failed batch succeed alone; poison fails once; its drafts fail; none twice."""
    engine = FakeEngine(threaded=mode == "threaded", raise_on_submit=mode == "raise")
    jobs = [job(1), job(POISON), job(2), job(3, DRAFT), job(4, DRAFT)]

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=8, deliver=recorder)
        loop.submit(jobs)
        await drained(loop)
        assert engine.batches == [[1, POISON, 2, 3, 4], [1], [POISON], [2]]
        assert recorder.seeds == [(3, "failed"), (4, "failed"), (1, "ok"), (POISON, "failed"), (2, "ok")]
        delivered = [j.id for j, _, _ in recorder.deliveries]
        assert sorted(delivered) == sorted(j.id for j in jobs)  # each exactly once
        by_seed = {j.request.seed: (r, e) for j, r, e in recorder.deliveries}
        assert by_seed[1][0] is not None and by_seed[1][0].text == "text 1" and by_seed[1][1] is None
        assert isinstance(by_seed[POISON][1], EngineError) and by_seed[POISON][0] is None
        assert [j.attempts for j in jobs] == [1, 1, 1, 0, 0]
        assert loop.stats.batches == 4 and loop.stats.failed_batches == 2 and loop.stats.jobs == 8

    run(main())


def test_loop_fails_batch_without_retry_when_it_holds_only_drafts() -> None:
    """A failed batch of drafts is delivered as failed once, with no retry batch."""
    engine = FakeEngine()

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=4, deliver=recorder)
        loop.submit([job(5, DRAFT), job(POISON, DRAFT)])
        await drained(loop)
        assert engine.batches == [[5, POISON]]
        assert recorder.seeds == [(5, "failed"), (POISON, "failed")]

    run(main())


def test_loop_sends_finals_first_in_bounded_batches_when_drafts_queued_earlier() -> None:
    """Drafts queued before finals still run after them, in batches of at most max_batch."""
    engine = FakeEngine(threaded=True)

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=2, deliver=recorder)
        loop.submit([job(10, DRAFT), job(11, DRAFT), job(12, DRAFT)])
        loop.submit([job(1), job(2), job(3)])
        await drained(loop)
        assert engine.batches == [[1, 2], [3, 10], [11, 12]]
        assert [s for s, _ in recorder.seeds] == [1, 2, 3, 10, 11, 12]
        assert list(loop.stats.batch_sizes) == [2, 2, 2]

    run(main())


def test_loop_forms_next_batch_from_freshest_work_when_jobs_arrive_during_a_batch() -> None:
    """While a batch runs, new finals jump ahead of waiting drafts and drafts are coalesced."""
    engine = FakeEngine(threaded=True)
    engine.gate.clear()

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=4, deliver=recorder)
        task = asyncio.create_task(loop.run())
        loop.submit([job(1)])
        await asyncio.sleep(0.05)  # batch [1] is in flight, held by the gate
        loop.submit([job(20, DRAFT, session="a")])
        loop.submit([job(21, DRAFT, session="a"), job(2)])
        engine.gate.set()
        loop.stop()
        await task
        assert engine.batches == [[1], [2, 21]]
        assert loop.scheduler.dropped_drafts == 1
        assert [s for s, _ in recorder.seeds] == [1, 2, 21]

    run(main())


def test_loop_waits_without_polling_when_idle_and_wakes_on_submit() -> None:
    """An idle loop neither polls the scheduler nor calls the engine; submit wakes it at once."""
    engine = FakeEngine(threaded=True)
    scheduler = CountingScheduler()

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, scheduler, max_batch=4, deliver=recorder)
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.2)
        assert engine.batches == [] and scheduler.polls == 1
        t0 = time.perf_counter()
        loop.submit([job(7)])
        await asyncio.wait_for(recorder.arrived.wait(), 1.0)
        assert time.perf_counter() - t0 < 0.5
        assert recorder.seeds == [(7, "ok")]
        await asyncio.sleep(0.2)
        assert scheduler.polls == 3  # idle, one batch, idle again: nothing in between
        loop.stop()
        await asyncio.wait_for(task, 1.0)

    run(main())


def test_loop_drops_waiting_jobs_when_session_forgotten() -> None:
    """forget_session removes that session's queued finals and draft; they never run."""
    engine = FakeEngine()

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=8, deliver=recorder)
        loop.submit([job(1, session="a"), job(2, session="b"), job(3, session="a"), job(4, DRAFT, session="a")])
        assert loop.forget_session("a") == 3
        assert loop.forget_session("a") == 0
        await drained(loop)
        assert engine.batches == [[2]]
        assert recorder.seeds == [(2, "ok")]

    run(main())


def test_loop_returns_from_run_after_queued_work_when_stopped() -> None:
    """stop() with work queued lets run() finish every job, then return; idle stop returns at once."""
    engine = FakeEngine(threaded=True)

    async def main() -> None:
        recorder = Recorder()
        loop = EngineLoop(engine, Scheduler(), max_batch=2, deliver=recorder)
        task = asyncio.create_task(loop.run())
        loop.submit([job(n) for n in range(5)] + [job(9, DRAFT)])
        loop.stop()
        await asyncio.wait_for(task, 2.0)
        assert recorder.seeds == [(n, "ok") for n in (0, 1, 2, 3, 4, 9)]
        assert len(loop.scheduler) == 0

        idle = EngineLoop(engine, Scheduler(), max_batch=2, deliver=recorder)
        task = asyncio.create_task(idle.run())
        await asyncio.sleep(0.05)
        idle.stop()
        await asyncio.wait_for(task, 1.0)

    run(main())


def test_loop_keeps_delivering_when_deliver_callback_raises() -> None:
    """A deliver callback raising for one session affects neither other jobs nor later batches."""
    engine = FakeEngine(threaded=True)

    async def main() -> None:
        recorder = Recorder(fail_for=lambda j: j.session == "broken")
        loop = EngineLoop(engine, Scheduler(), max_batch=2, deliver=recorder)
        task = asyncio.create_task(loop.run())
        loop.submit([job(1, session="broken"), job(2), job(POISON, session="broken"), job(3)])
        await asyncio.sleep(0.1)
        assert not task.done()
        loop.submit([job(4)])
        loop.stop()
        await asyncio.wait_for(task, 2.0)
        # Fair order: after its first final the broken session is charged, so s3's final goes first.
        assert recorder.seeds == [(1, "ok"), (2, "ok"), (3, "ok"), (POISON, "failed"), (4, "ok")]

    run(main())
