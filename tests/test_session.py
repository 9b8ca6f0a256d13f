"""Tests for server.core.session: real espeak speech as client bytes in, session events and jobs out.

The engine is not needed: jobs are answered with hand-made results through ``job_done`` /
``job_failed``, in whatever order a test wants, on a fake clock.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from audio_fixtures import SAMPLE_RATE, speech_with_pauses

from server.core.events import (
    Audio,
    Configure,
    Draft,
    Ended,
    EndStream,
    Final,
    Finalize,
    KeepAlive,
    Problem,
    ProblemCode,
    SpeechStarted,
    SpeechStopped,
)
from server.core.pcm import Encoding
from server.core.requests import PhaseTimings, TranscribeResult, WordTiming
from server.core.scheduler import Job, JobKind
from server.core.vad_config import VadConfig
from server.core.session import (
    Output,
    Session,
    SessionConfig,
    SessionError,
    SessionState,
    StreamFormat,
)

SR = SAMPLE_RATE
THREE_SENTENCES: list[str | float] = [
    0.8,
    "The quick brown fox jumps over the lazy dog.",
    1.2,
    "She sells sea shells by the sea shore.",
    1.5,
    "Thank you very much.",
    1.2,
]
EOS = EndStream("eos")
TAIL = VadConfig().samples(VadConfig().tail_ms)  # a segment ends this long after its last voiced frame
FINALIZE = Finalize()


class Clock:
    """A session clock that only moves when the test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def encode(audio: np.ndarray, encoding: Encoding) -> bytes:
    if encoding is Encoding.PCM_S16LE:
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return audio.astype("<f4").tobytes()


def make_session(
    encoding: Encoding = Encoding.PCM_S16LE, sample_rate: int = SR, interim: bool = True, clock: Clock | None = None,
    pause_draft_ms: int = 0, language: str | None = "en",
) -> Session:
    params = StreamFormat(sample_rate=sample_rate, encoding=encoding, language=language, interim_results=interim)
    config = SessionConfig("tiny", draft_steps=2, final_steps=16, pause_draft_ms=pause_draft_ms)
    return Session("s1", params, config, clock=clock or Clock())


def feed(session: Session, data: bytes, chunk: int | list[int] = 6400, clock: Clock | None = None) -> Output:
    """Feed ``data`` in chunks of a fixed size (or the given sizes, cycled); the clock follows the audio."""
    sizes = [chunk] if isinstance(chunk, int) else chunk
    rate = session.stream.sample_rate * session.stream.encoding.sample_width
    out, pos, i = Output(), 0, 0
    while pos < len(data):
        piece = data[pos : pos + sizes[i % len(sizes)]]
        if clock is not None:
            clock.now += len(piece) / rate
        out.extend(session.feed(piece))
        pos += len(piece)
        i += 1
    return out


def result(text: str, steps: int = 16, language: str | None = None) -> TranscribeResult:
    return TranscribeResult(text, canvas=(1, 2, 3), steps=steps, timings=PhaseTimings(0.0, 0.0, 0.0, 0.0, 1),
                            language=language)


def of_kind(jobs: list[Job], kind: JobKind, segment: int | None = None) -> list[Job]:
    return [j for j in jobs if j.kind is kind and (segment is None or j.segment == segment)]


def spans(messages: list[object]) -> list[tuple[float, float]]:
    """(start, end) per segment from speech_started/speech_stopped, checking their pairing."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for m in messages:
        if isinstance(m, SpeechStarted):
            assert start is None and m.segment == len(out), f"unexpected {m}"
            start = m.start
        elif isinstance(m, SpeechStopped):
            assert start is not None and m.segment == len(out), f"unexpected {m}"
            out.append((start, m.end))
            start = None
    return out


@pytest.fixture(scope="module")
def three() -> tuple[np.ndarray, list[tuple[float, float]]]:
    return speech_with_pauses(THREE_SENTENCES)


@pytest.mark.parametrize("encoding", [Encoding.PCM_S16LE, Encoding.PCM_F32LE])
def test_session_announces_segments_with_drafts_and_one_final_when_three_sentences_streamed(
    three: tuple[np.ndarray, list[tuple[float, float]]], encoding: Encoding
) -> None:
    """Three sentences give started/stopped 0,1,2 in order, growing drafts, then one final each."""
    audio, truth = three
    session = make_session(encoding)
    out = feed(session, encode(audio, encoding))
    assert all(isinstance(m, SpeechStarted | SpeechStopped) for m in out.events)
    assert [(type(m).__name__, m.segment) for m in out.events] == [
        (name, n) for n in range(3) for name in ("SpeechStarted", "SpeechStopped")
    ]
    segments = spans(out.events)
    for n, ((start, end), (t_start, t_end)) in enumerate(zip(segments, truth)):
        assert t_start - 0.4 <= start <= t_start and t_end <= end <= t_end + 0.4, f"segment {n}"
    # Jobs come segment by segment: drafts while open, then exactly one final.
    assert [j.segment for j in out.jobs] == sorted(j.segment for j in out.jobs)
    assert all(j.session == "s1" for j in out.jobs)
    for n, (start, end) in enumerate(segments):
        jobs = [j for j in out.jobs if j.segment == n]
        assert [j.kind for j in jobs[:-1]] == [JobKind.DRAFT] * (len(jobs) - 1)
        assert jobs[-1].kind is JobKind.FINAL
        drafts, final = jobs[:-1], jobs[-1]
        assert len(drafts) >= 2, f"segment {n}: {len(drafts)} drafts"
        ends = [d.end for d in drafts]
        assert all(b - a >= 450 * SR // 1000 for a, b in zip(ends, ends[1:])), ends
        assert [len(d.request.audio) for d in drafts] == ends
        assert final.request.steps == 16 and all(d.request.steps == 2 for d in drafts)
        assert len(final.request.audio) == round((end - start) * SR)
        for d in drafts:  # each draft is the segment so far: a prefix of the final's audio
            np.testing.assert_array_equal(d.request.audio, final.request.audio[: d.end])
    assert session.segments == 3 and session.pending_finals == 3
    assert session.state is SessionState.STREAMING


@pytest.mark.parametrize("chunk", [640, 6400])
def test_session_drafts_all_the_speech_so_far_when_the_speaker_pauses(
    three: tuple[np.ndarray, list[tuple[float, float]]], chunk: int
) -> None:
    """The last draft of each sentence covers it up to its last voiced frame, before the final,
    and hears the silence after it that the final will (the end of the last word: without it the
    demo read "standard" as "stande"); with the pause draft off, drafts come only every 450 ms
    of speech and lag behind."""
    audio, _ = three
    data = encode(audio, Encoding.PCM_S16LE)
    lags, catch_ups = {}, {}
    for pause_ms in (150, 0):
        out = feed(make_session(pause_draft_ms=pause_ms), data, chunk)
        lags[pause_ms] = []
        for n in range(3):
            drafts, final = of_kind(out.jobs, JobKind.DRAFT, n), of_kind(out.jobs, JobKind.FINAL, n)[0]
            lags[pause_ms].append(len(final.request.audio) - TAIL - drafts[-1].end)
            assert out.jobs.index(drafts[-1]) < out.jobs.index(final)
            assert len({d.end for d in drafts}) == len(drafts)  # never the same audio twice
            # only a pause's draft jumps the drafts queue (the scheduler runs catch-ups first); with
            # long chunks the last interval draft may already reach the pause, and none is needed
            assert not any(d.catch_up for d in drafts[:-1]) and drafts[-1].catch_up <= (pause_ms > 0)
            catch_ups[pause_ms] = catch_ups.get(pause_ms, 0) + drafts[-1].catch_up
            for d in drafts:
                heard = len(d.request.audio) - d.end  # beyond the speech it covers: the pause's tail
                assert (min(pause_ms * SR // 1000, TAIL) <= heard <= TAIL) if d.catch_up else heard == 0, heard
                np.testing.assert_array_equal(d.request.audio, final.request.audio[: len(d.request.audio)])
    assert lags[150] == [0, 0, 0] and catch_ups[150] >= 1 and catch_ups[0] == 0
    assert max(lags[0]) > 0, lags  # without it the last draft misses the end of a sentence


def test_session_final_names_the_language_the_model_heard_when_no_hint_was_given(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Automatic language: each final says what the engine heard, segment by segment (a speaker
    may switch); a result that does not say keeps the hint (None here)."""
    audio, _ = three
    session = make_session(language=None)
    finals = of_kind(feed(session, encode(audio, Encoding.PCM_S16LE)).jobs, JobKind.FINAL)
    assert {j.request.language for j in finals} == {None}
    events = [e for job, heard in zip(finals, ["fr", "de", None])
              for e in session.job_done(job, result("mot", language=heard)).events]
    assert [e.language for e in events if isinstance(e, Final)] == ["fr", "de", None]


def test_session_releases_finals_in_segment_order_when_jobs_complete_out_of_order(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Final 1 completing before final 0 is held back; final 0 then releases both, in order."""
    audio, _ = three
    session = make_session()
    out = feed(session, encode(audio, Encoding.PCM_S16LE))
    finals = of_kind(out.jobs, JobKind.FINAL)
    segments = spans(out.events)
    assert session.job_done(finals[1], result("sea shells")).events == []
    assert session.pending_finals == 3
    released = session.job_done(finals[0], result("quick brown fox")).events
    assert released == [
        Final(0, "quick brown fox", segments[0][0], segments[0][1], 16, "en", released[0].latency_ms),
        Final(1, "sea shells", segments[1][0], segments[1][1], 16, "en", released[1].latency_ms),
    ]
    assert session.pending_finals == 1
    assert session.job_done(finals[2], result("thank you")).events == [
        Final(2, "thank you", segments[2][0], segments[2][1], 16, "en", released[0].latency_ms)
    ]
    assert session.pending_finals == 0


def test_session_drops_partial_when_draft_completes_after_speech_stopped(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """A draft of segment 0 that completes once the segment closed yields no partial."""
    audio, truth = three
    session = make_session()
    data = encode(audio, Encoding.PCM_S16LE)
    split = 2 * round((truth[0][0] + 1.5) * SR)  # mid sentence 0, in bytes
    before = feed(session, data[:split])
    assert spans(before.events) == [] and len(before.events) == 1  # open, not stopped
    drafts = of_kind(before.jobs, JobKind.DRAFT, 0)
    assert drafts
    after = feed(session, data[split:])
    assert isinstance(after.events[0], SpeechStopped) and after.events[0].segment == 0
    assert session.job_done(drafts[-1], result("the quick", 2)).events == []


def test_session_drops_older_draft_result_when_newer_partial_was_sent(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Draft 2's partial goes out; draft 1 completing later is dropped, not sent backwards."""
    audio, truth = three
    session = make_session()
    split = 2 * round((truth[0][0] + 2.0) * SR)
    out = feed(session, encode(audio, Encoding.PCM_S16LE)[:split])
    started = out.events[0]
    assert isinstance(started, SpeechStarted)
    drafts = of_kind(out.jobs, JobKind.DRAFT, 0)
    assert len(drafts) >= 2
    newer, older = drafts[-1], drafts[-2]
    partial = session.job_done(newer, result("the quick brown", 2)).events
    assert partial == [Draft(0, "the quick brown", started.start, round(started.start + newer.end / SR, 3), 2)]
    assert session.job_done(older, result("the quick", 2)).events == []
    assert session.job_done(newer, result("the quick brown", 2)).events == []  # a repeat is no news


@pytest.mark.parametrize("warm", [True, False])
def test_session_warm_starts_later_jobs_from_partial_canvas_when_enabled(
    three: tuple[np.ndarray, list[tuple[float, float]]], warm: bool
) -> None:
    """With warm_start, jobs after a partial start from its canvas; without, from scratch."""
    audio, truth = three
    params = StreamFormat(language="en")
    session = Session("s1", params, SessionConfig("tiny", 2, 16, warm_start=warm), clock=Clock())
    data = encode(audio, Encoding.PCM_S16LE)
    split = 2 * round((truth[0][0] + 1.0) * SR)
    first = feed(session, data[:split])
    assert all(j.request.start_canvas is None for j in first.jobs)
    session.job_done(of_kind(first.jobs, JobKind.DRAFT)[-1], result("the quick", 2))
    later = [j for j in feed(session, data[split:]).jobs if j.segment == 0]
    assert [j.kind for j in later][-1] is JobKind.FINAL and len(later) >= 2
    assert [j.request.start_canvas for j in later] == [(1, 2, 3) if warm else None] * len(later)


def test_session_measures_final_latency_from_segment_close_when_clock_advances(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """latency_ms is the session clock's time between speech_stopped and the final's result."""
    audio, truth = three
    clock = Clock()
    session = make_session(clock=clock)
    data = encode(audio, Encoding.PCM_S16LE)
    out = Output()
    pos = 0
    while not of_kind(out.jobs, JobKind.FINAL):  # stop feeding right at the first close
        out.extend(session.feed(data[pos : pos + 640]))
        pos += 640
        clock.now += 0.02
    closed_at = clock.now - 0.02
    clock.now = closed_at + 0.2375
    final = session.job_done(of_kind(out.jobs, JobKind.FINAL)[0], result("fox")).events[0]
    assert isinstance(final, Final)
    assert final.latency_ms == pytest.approx(237.5, abs=0.1)


@pytest.mark.parametrize("rate", [SR, 48000])
def test_session_sends_closed_after_last_final_when_eos_arrives_mid_speech(
    three: tuple[np.ndarray, list[tuple[float, float]]], rate: int
) -> None:
    """eos mid-word stops the segment at the last sample, queues its final; `closed` follows it.

    At 48 kHz the resampler holds ~20 ms back until it is flushed: eos must flush it, so
    the segment still ends at the last sample the client sent.
    """
    audio, truth = three
    session = make_session(sample_rate=rate)
    fed = round((truth[0][0] + 1.5) * SR)
    clip = audio[:fed] if rate == SR else soxr.resample(audio[:fed], SR, rate).astype(np.float32)
    out = feed(session, encode(clip, Encoding.PCM_S16LE), chunk=rate // 5 * 2)
    started = out.events[0]
    assert [type(m) for m in out.events] == [SpeechStarted]
    end = session.handle(EOS)
    assert session.state is SessionState.DRAINING
    assert end.events == [SpeechStopped(0, round(fed / SR, 3))]
    assert [(j.kind, j.segment) for j in end.jobs] == [(JobKind.FINAL, 0)]
    assert len(end.jobs[0].request.audio) == fed - round(started.start * SR)
    assert session.close_reason == "eos"
    done = session.job_done(end.jobs[0], result("the quick brown fox"))
    assert [type(m) for m in done.events] == [Final, Ended]
    assert done.events[1] == Ended("eos", 1, round(fed / SR, 3))
    assert session.state is SessionState.CLOSED


def test_session_closes_at_once_when_eos_arrives_with_nothing_pending() -> None:
    """eos after silence only gives `closed` with zero segments and the seconds received."""
    session = make_session()
    feed(session, encode(np.zeros(SR // 2, np.float32), Encoding.PCM_S16LE))
    assert session.handle(EOS).events == [Ended("eos", 0, 0.5)]
    assert session.state is SessionState.CLOSED
    assert session.handle(FINALIZE) == Output()  # ending already: nothing changes


def test_session_raises_when_audio_fed_after_eos() -> None:
    """Feeding audio once the session is draining or closed raises SessionError naming the state."""
    session = make_session()
    session.handle(EOS)
    with pytest.raises(SessionError, match="feed audio.*CLOSED"):
        session.feed(b"\x00\x00" * 160)


def test_session_closes_segment_now_when_finalize_sent_mid_speech(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """finalize mid-sentence stops segment 0 at once; the rest of the sentence opens segment 1."""
    audio, truth = three
    session = make_session()
    data = encode(audio[: round((truth[0][1] + 1.0) * SR)], Encoding.PCM_S16LE)
    cut = 2 * round((truth[0][0] + 1.2) * SR)
    out = feed(session, data[:cut])
    fin = session.handle(FINALIZE)
    assert [type(m) for m in fin.events] == [SpeechStopped]
    assert fin.events[0].segment == 0 and fin.events[0].end <= cut / 2 / SR
    assert [(j.kind, j.segment) for j in fin.jobs] == [(JobKind.FINAL, 0)]
    assert session.state is SessionState.STREAMING
    rest = feed(session, data[cut:])
    segments = spans(out.events + fin.events + rest.events)
    assert len(segments) == 2
    assert segments[0][1] <= segments[1][0] <= segments[0][1] + 0.1
    assert of_kind(rest.jobs, JobKind.FINAL, 1)


def test_session_schedules_no_drafts_when_interim_results_off(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """interim_results=false: the same speech gives three finals and not one draft."""
    audio, _ = three
    session = make_session(interim=False)
    out = feed(session, encode(audio, Encoding.PCM_S16LE))
    assert [(j.kind, j.segment) for j in out.jobs] == [(JobKind.FINAL, n) for n in range(3)]


def test_session_ignores_keepalive_and_control_after_the_stream_ended(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """KeepAlive changes nothing; after EndStream, Finalize/EndStream/KeepAlive change nothing either."""
    audio, _ = three
    session = make_session()
    assert session.handle(KeepAlive()) == Output()
    out = session.handle(Audio(encode(audio[: SR * 2], Encoding.PCM_S16LE)))
    assert [type(e) for e in out.events][:1] == [SpeechStarted]
    ending = session.handle(EndStream("idle"))
    assert session.state is SessionState.DRAINING and [type(e) for e in ending.events] == [SpeechStopped]
    for command in (Finalize(), EndStream("eos"), KeepAlive()):
        assert session.handle(command) == Output()
    assert session.close_reason == "idle"


def test_session_drops_frame_with_bad_audio_error_when_float_frame_has_nan(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """A NaN float frame gives one bad_audio error; later speech still segments, on time.

    Times count from the client's first sample, so the dropped frame must keep its
    duration: segments after it have the same boundaries as in the clean stream.
    """
    audio, truth = three
    data = encode(audio, Encoding.PCM_F32LE)
    clean = spans(feed(make_session(Encoding.PCM_F32LE), data).events)
    session = make_session(Encoding.PCM_F32LE)
    gap = 4 * round((truth[0][1] + 0.7) * SR)  # in the pause after sentence 0
    bad = np.frombuffer(data[gap : gap + 6400], "<f4").copy()
    bad[100] = np.nan
    first = feed(session, data[:gap])
    out = session.feed(bad.tobytes())
    assert len(out.events) == 1 and not out.jobs
    error = out.events[0]
    assert isinstance(error, Problem) and error.code == ProblemCode.BAD_AUDIO and not error.fatal
    assert "NaN" in error.message and error.message.count("frame dropped") == 1
    rest = feed(session, data[gap + 6400 :])
    segments = spans(first.events + rest.events)
    assert len(segments) == 3
    for (start, end), (ref_start, ref_end) in zip(segments, clean):
        assert abs(start - ref_start) <= 0.03 and abs(end - ref_end) <= 0.03
    assert len(of_kind(first.jobs + rest.jobs, JobKind.FINAL)) == 3
    assert session.audio_seconds == pytest.approx(len(audio) / SR)


def test_session_sends_error_then_empty_final_when_final_job_fails(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """A failed final gives internal error + empty final, in order; a failed draft gives nothing."""
    audio, _ = three
    session = make_session()
    out = feed(session, encode(audio, Encoding.PCM_S16LE))
    segments = spans(out.events)
    assert session.job_failed(of_kind(out.jobs, JobKind.DRAFT, 2)[-1], RuntimeError("boom")) == Output()
    failed = session.job_failed(of_kind(out.jobs, JobKind.FINAL, 0)[0], RuntimeError("boom")).events
    assert [type(m) for m in failed] == [Problem, Final]
    assert failed[0].code == ProblemCode.INTERNAL and "segment 0" in failed[0].message
    assert failed[1] == Final(0, "", segments[0][0], segments[0][1], 0, "en", failed[1].latency_ms)
    assert session.pending_finals == 2


def test_session_finds_same_segments_when_input_is_48khz(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """48 kHz input of the same speech gives the same segments, boundaries within 50 ms."""
    audio, _ = three
    reference = spans(feed(make_session(), encode(audio, Encoding.PCM_S16LE)).events)
    audio48 = soxr.resample(audio, SR, 48000).astype(np.float32)
    session = make_session(sample_rate=48000)
    out = feed(session, encode(audio48, Encoding.PCM_S16LE), chunk=19200)
    out.extend(session.handle(EOS))
    segments = spans(out.events)
    assert len(segments) == len(reference) == 3
    for (start, end), (ref_start, ref_end) in zip(segments, reference):
        assert abs(start - ref_start) <= 0.05 and abs(end - ref_end) <= 0.05
    assert session.audio_seconds == pytest.approx(len(audio48) / 48000)


def test_session_gives_same_messages_and_finals_when_chunk_sizes_differ(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Whole-buffer, odd-sized and random chunks give identical messages and final audio."""
    audio, _ = three
    data = encode(audio, Encoding.PCM_S16LE)

    def run(chunk: int | list[int]) -> tuple[list[object], list[tuple[int, bytes]], list[Job]]:
        session = make_session()
        out = feed(session, data, chunk)
        out.extend(session.handle(EOS))
        finals = [(j.segment, j.request.audio.tobytes()) for j in of_kind(out.jobs, JobKind.FINAL)]
        return out.events, finals, of_kind(out.jobs, JobKind.DRAFT)

    ref_messages, ref_finals, _ = run(len(data))
    assert len(ref_finals) == 3
    rng = np.random.default_rng(11)
    for chunk in (333, 6400, [int(n) for n in rng.integers(1, 5000, 300)]):
        messages, finals, drafts = run(chunk)
        assert messages == ref_messages, f"chunk {chunk if isinstance(chunk, int) else 'random'}"
        assert finals == ref_finals
        assert sorted({d.segment for d in drafts}) == [0, 1, 2]


def test_session_configure_changes_the_pause_that_ends_a_segment_and_the_language_of_later_jobs(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Configure mid-stream: a 2 s pause length merges the three sentences (pauses 1.2 and 1.5 s)
    into one segment, and jobs from then on carry the new language hint."""
    audio, _ = three
    data = encode(audio, Encoding.PCM_S16LE)
    session = make_session()
    assert session.handle(Configure(set_language=True, language="de", silence_ms=2000)) == Output()
    out = feed(session, data)
    out.extend(session.handle(EndStream("eos")))
    assert len(spans(out.events)) == 1
    assert {j.request.language for j in out.jobs} == {"de"}
    plain = make_session()
    assert len(spans(feed(plain, data).events + plain.handle(EndStream("eos")).events)) == 3
    assert {j.request.language for j in feed(make_session(), data).jobs} == {"en"}


def test_finals_ask_for_word_timings_and_carry_them_in_stream_time(
    three: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """Final jobs ask the engine for word timings, drafts do not; a final's words are shifted from
    segment time to stream time."""
    audio, _ = three
    out = feed(make_session(), encode(audio, Encoding.PCM_S16LE))
    assert {j.request.word_timings for j in of_kind(out.jobs, JobKind.FINAL)} == {True}
    assert {j.request.word_timings for j in of_kind(out.jobs, JobKind.DRAFT)} == {False}
    session = make_session()
    out = feed(session, encode(audio, Encoding.PCM_S16LE))
    start = next(e.start for e in out.events if isinstance(e, SpeechStarted) and e.segment == 1)
    timed = TranscribeResult("she sells", canvas=(1,), steps=16, timings=PhaseTimings(0, 0, 0, 0, 1),
                             words=(WordTiming("she", 0.1, 0.3, 0.9), WordTiming("sells", 0.35, 0.8, 0.6)))
    session.job_done(of_kind(out.jobs, JobKind.FINAL, 0)[0], result("the quick"))
    final = session.job_done(of_kind(out.jobs, JobKind.FINAL, 1)[0], timed).events[0]
    assert isinstance(final, Final) and final.segment == 1
    assert final.words == (WordTiming("she", round(start + 0.1, 3), round(start + 0.3, 3), 0.9),
                           WordTiming("sells", round(start + 0.35, 3), round(start + 0.8, 3), 0.6))
