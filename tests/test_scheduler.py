"""Tests for server.core.scheduler: batching order, draft coalescing, retries and bounds (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.scheduler import Job, JobKind, Scheduler, SchedulerFull
from server.engine import TranscribeRequest

FINAL, DRAFT = JobKind.FINAL, JobKind.DRAFT


def job(session: str, segment: int, kind: JobKind, end: int = 0) -> Job:
    """A job over a few samples of silence; only its tags matter to the scheduler."""
    return Job(session, segment, kind, TranscribeRequest(np.zeros(16, np.float32), 1, seed=segment), end=end)


def tags(jobs: list[Job]) -> list[tuple[str, int, str]]:
    return [(j.session, j.segment, j.kind.value) for j in jobs]


def drain(scheduler: Scheduler, max_batch: int) -> list[list[Job]]:
    """Every batch the scheduler hands out until it is empty."""
    batches = []
    while batch := scheduler.next_batch(max_batch):
        batches.append(batch)
    return batches


def test_scheduler_puts_finals_before_drafts_when_drafts_submitted_first() -> None:
    """Drafts submitted earlier still go after every final, finals FIFO, drafts oldest first."""
    s = Scheduler()
    for j in [job("a", 0, DRAFT), job("b", 0, DRAFT), job("c", 3, FINAL), job("d", 1, FINAL),
              job("e", 0, DRAFT), job("c", 4, FINAL)]:
        s.submit(j)
    assert len(s) == 6 and s.pending_finals == 3
    batches = drain(s, 4)
    assert [tags(b) for b in batches] == [
        [("c", 3, "final"), ("d", 1, "final"), ("c", 4, "final"), ("a", 0, "draft")],
        [("b", 0, "draft"), ("e", 0, "draft")],
    ]
    assert len(s) == 0


def test_scheduler_sends_finals_without_drafts_when_rows_cost_their_sum() -> None:
    """An engine on CPU threads: a draft in a final's batch would delay the final by its whole
    cost, so finals go alone and the drafts follow in the next batch."""
    s = Scheduler(drafts_with_finals=False)
    for j in [job("a", 0, DRAFT), job("b", 0, DRAFT), job("c", 3, FINAL), job("d", 1, FINAL)]:
        s.submit(j)
    assert [tags(b) for b in drain(s, 4)] == [
        [("c", 3, "final"), ("d", 1, "final")],
        [("a", 0, "draft"), ("b", 0, "draft")],
    ]


def test_scheduler_caps_drafts_per_batch_when_max_drafts_set() -> None:
    """On CPU threads eight batched drafts save nothing and hold a final that arrives meanwhile
    for all eight: with max_drafts 2 the drafts go two by two, and a final submitted between
    two draft batches goes next."""
    s = Scheduler(drafts_with_finals=False, max_drafts=2)
    for name in "abcde":
        s.submit(job(name, 0, DRAFT))
    assert tags(s.next_batch(16)) == [("a", 0, "draft"), ("b", 0, "draft")]
    s.submit(job("z", 0, FINAL))
    assert [tags(b) for b in drain(s, 16)] == [
        [("z", 0, "final")],
        [("c", 0, "draft"), ("d", 0, "draft")],
        [("e", 0, "draft")],
    ]
    with pytest.raises(ValueError, match="max_drafts"):
        Scheduler(max_drafts=0)


def test_scheduler_runs_catch_up_draft_before_other_drafts() -> None:
    """A draft of the whole segment at a pause goes before drafts submitted earlier (its
    final follows within the VAD's silence); finals still go before it."""
    s = Scheduler(drafts_with_finals=False, max_drafts=1)
    for name in "ab":
        s.submit(job(name, 0, DRAFT))
    pause = job("c", 0, DRAFT)
    pause.catch_up = True
    s.submit(pause)
    s.submit(job("d", 5, FINAL))
    assert [tags(b) for b in drain(s, 16)] == [
        [("d", 5, "final")], [("c", 0, "draft")], [("a", 0, "draft")], [("b", 0, "draft")],
    ]


def test_scheduler_respects_batch_bound_when_many_jobs_wait() -> None:
    """Seven finals and three drafts with max_batch 3 give batches of 3,3,3,1 in order."""
    s = Scheduler()
    finals = [job(f"s{n}", n, FINAL) for n in range(7)]
    drafts = [job(f"d{n}", 0, DRAFT) for n in range(3)]
    for j in drafts + finals:
        s.submit(j)
    batches = drain(s, 3)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [j for b in batches for j in b] == finals + drafts


def test_scheduler_refuses_batch_size_when_below_one() -> None:
    """next_batch(0) is a caller bug and raises rather than returning nothing forever."""
    with pytest.raises(ValueError, match="max_batch"):
        Scheduler().next_batch(0)


def test_scheduler_keeps_newest_draft_when_session_submits_several() -> None:
    """A newer draft replaces the pending one of the same session, is returned and counted."""
    s = Scheduler()
    first, second, third = job("a", 0, DRAFT, end=8000), job("a", 0, DRAFT, end=16000), job("a", 0, DRAFT, end=24000)
    other = job("b", 0, DRAFT)
    assert s.submit(first) is None
    assert s.submit(other) is None
    assert s.submit(second) is first
    assert s.submit(third) is second
    assert s.dropped_drafts == 2
    assert len(s) == 2
    # The replacement is re-queued at the back: b's older draft now goes first.
    assert s.next_batch(8) == [other, third]


def test_scheduler_discards_pending_draft_when_same_session_submits_final() -> None:
    """A final for the same or a later segment discards that session's draft, not others'."""
    s = Scheduler()
    draft_a, draft_b = job("a", 2, DRAFT), job("b", 2, DRAFT)
    s.submit(draft_a)
    s.submit(draft_b)
    final_a = job("a", 2, FINAL)
    assert s.submit(final_a) is draft_a
    assert s.dropped_drafts == 1
    assert s.next_batch(8) == [final_a, draft_b]

    s.submit(job("c", 1, DRAFT))
    final_c = job("c", 5, FINAL)
    stale = s.submit(final_c)
    assert stale is not None and stale.segment == 1
    assert s.next_batch(8) == [final_c]


def test_scheduler_keeps_draft_when_final_is_for_earlier_segment() -> None:
    """A final for segment 3 leaves the draft of the already open segment 4 queued."""
    s = Scheduler()
    draft = job("a", 4, DRAFT)
    s.submit(draft)
    final = job("a", 3, FINAL)
    assert s.submit(final) is None
    assert s.dropped_drafts == 0
    assert s.next_batch(8) == [final, draft]


def test_scheduler_runs_retried_finals_alone_when_batch_failed() -> None:
    """Retried finals go to the front, each in a batch of its own, then batching resumes."""
    s = Scheduler()
    failed = [job("a", 0, FINAL), job("b", 0, FINAL), job("c", 0, FINAL)]
    for j in failed:
        s.submit(j)
    assert s.next_batch(8) == failed
    later = [job("d", 0, FINAL), job("e", 0, FINAL)]
    draft = job("f", 0, DRAFT)
    for j in later + [draft]:
        s.submit(j)
    s.retry(failed)
    assert all(j.alone for j in failed)
    batches = drain(s, 8)
    assert batches == [[failed[0]], [failed[1]], [failed[2]], later + [draft]]


def test_scheduler_batches_normally_when_retried_finals_are_done() -> None:
    """A retried final at the head never pulls jobs behind it into its batch."""
    s = Scheduler()
    poisoned = job("a", 0, FINAL)
    s.submit(poisoned)
    s.next_batch(4)
    s.retry([poisoned])
    s.submit(job("b", 0, DRAFT))
    assert s.next_batch(4) == [poisoned]
    assert tags(s.next_batch(4)) == [("b", 0, "draft")]


def test_scheduler_removes_only_that_session_when_session_removed() -> None:
    """remove_session returns and forgets the session's finals and draft; others stay in order."""
    s = Scheduler()
    jobs = [job("a", 0, FINAL), job("b", 0, FINAL), job("a", 1, FINAL), job("a", 2, DRAFT), job("b", 1, DRAFT)]
    for j in jobs:
        s.submit(j)
    removed = s.remove_session("a")
    assert sorted(tags(removed)) == [("a", 0, "final"), ("a", 1, "final"), ("a", 2, "draft")]
    assert len(s) == 2 and s.pending_finals == 1
    assert s.next_batch(8) == [jobs[1], jobs[4]]
    assert s.remove_session("a") == []


def test_scheduler_raises_full_when_final_bound_reached() -> None:
    """The (max_finals + 1)-th final raises SchedulerFull and leaves the queue unchanged."""
    s = Scheduler(max_finals=3)
    draft = job("z", 0, DRAFT)
    s.submit(draft)
    for n in range(3):
        s.submit(job("a", n, FINAL))
    with pytest.raises(SchedulerFull, match="3"):
        s.submit(job("z", 0, FINAL))
    assert s.pending_finals == 3
    assert draft in s.next_batch(8)  # the refused final did not discard z's draft
    s.submit(job("a", 3, FINAL))  # room again once finals were taken
    assert s.pending_finals == 1


def steps_job(session: str, segment: int, steps: int, kind: JobKind = FINAL) -> Job:
    return Job(session, segment, kind, TranscribeRequest(np.zeros(16, np.float32), steps, seed=segment))


def test_scheduler_share_does_not_grow_with_the_steps_a_session_asks_for() -> None:
    """F5: a session asking for 64-step finals queued first; four 8-step sessions still get all their
    finals before its second one, and no 64-step job ever joins a batch led by an 8-step job."""
    s = Scheduler()
    for n in range(4):
        s.submit(steps_job("hog", n, 64))
    for n in range(4):
        for name in "abcd":
            s.submit(steps_job(name, n, 8))
    batches = drain(s, 4)
    assert sum(len(b) for b in batches) == 20
    for batch in batches:
        assert max(j.request.steps for j in batch) == batch[0].request.steps  # the first job's steps cap it
    where = {(j.session, j.segment): i for i, b in enumerate(batches) for j in b}
    assert all(where[(name, n)] < where[("hog", 1)] for name in "abcd" for n in range(4))
    for name in "abcd":  # each session's finals in its own order
        assert [where[(name, n)] for n in range(4)] == sorted(where[(name, n)] for n in range(4))
    assert s.charged("hog") == 4 * 64 and s.charged("a") == 4 * 8


def test_scheduler_rejoins_a_quiet_session_at_the_lowest_waiting_charge() -> None:
    """A session idle while others worked is not owed a burst: it rejoins at the least charge waiting."""
    s = Scheduler()
    for n in range(6):
        s.submit(steps_job("busy", n, 8))
        s.submit(steps_job("other", n, 8))
    drain(s, 2)
    assert s.charged("busy") == 48
    s.submit(steps_job("busy", 6, 8))
    s.submit(steps_job("quiet", 0, 8))
    assert s.charged("quiet") == 48
    s.submit(steps_job("quiet", 1, 8))
    order = [(j.session, j.segment) for b in drain(s, 1) for j in b]
    assert order == [("busy", 6), ("quiet", 0), ("quiet", 1)]


def test_scheduler_for_cpu_threads_sends_finals_alone_and_drafts_one_by_one() -> None:
    """The server's policy per device: on CPU threads finals go without drafts and drafts one at
    a time; on an accelerator extra rows are nearly free, so drafts ride with finals."""
    jobs = lambda: [job("a", 0, DRAFT), job("b", 0, DRAFT), job("c", 1, FINAL)]  # noqa: E731
    cpu, gpu = Scheduler.for_device(cpu=True), Scheduler.for_device(cpu=False)
    for s in (cpu, gpu):
        for j in jobs():
            s.submit(j)
    assert [tags(b) for b in drain(cpu, 16)] == [[("c", 1, "final")], [("a", 0, "draft")], [("b", 0, "draft")]]
    assert [tags(b) for b in drain(gpu, 16)] == [[("c", 1, "final"), ("a", 0, "draft"), ("b", 0, "draft")]]
