"""One client's stream as an I/O-free state machine: commands in, events and jobs out.

How this works
--------------
A :class:`Session` turns typed commands (:mod:`server.core.events`: audio, finalize,
end, keepalive) into two kinds of output (an :class:`Output`): events for the client and
:class:`~server.core.scheduler.Job` objects for the engine. It knows no wire protocol:
a transport decodes its frames into commands and encodes the events into its messages;
tests call it directly.

Audio: client bytes -> :class:`PcmDecoder` -> :class:`StreamResampler` (to 16 kHz) ->
:class:`Segmenter`. Segment events become ``SpeechStarted`` / ``SpeechStopped``. While a
segment is open, every ``partial_interval_ms`` of new speech yields a draft job over the
segment so far, and, if ``pause_draft_ms`` is set, so does a pause that long after speech
not drafted yet (the caption catches up with the speaker at each pause instead of lagging
up to an interval behind until the final; that draft also hears the pause so far, up to
the tail the final will have, so its last word is heard to its end); when it closes, a
final job. Engine results
come back through :meth:`Session.job_done` (the update step of the engine loop).

Guarantees kept here: for each segment ``SpeechStarted``, drafts, ``SpeechStopped``,
then exactly one ``Final``; finals leave in segment order even if they complete out of
order; a draft that completes after its segment closed is dropped; after ``EndStream``
(eos, idle, stalled, shutdown) every open segment is finalized before ``Ended``.

States: ``STREAMING`` (audio accepted) -> ``DRAINING`` (end requested, finals pending)
-> ``CLOSED`` (``Ended`` given out). ``ABORTED`` when the client vanished. Feeding audio
in any state but ``STREAMING`` raises :class:`SessionError`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.core.audio import BadAudio, PcmDecoder, StreamResampler
from server.core.events import (
    Audio,
    Command,
    Configure,
    Draft,
    Ended,
    EndStream,
    Event,
    Final,
    Finalize,
    KeepAlive,
    Problem,
    ProblemCode,
    SpeechStarted,
    SpeechStopped,
)
from server.core.pcm import SAMPLE_RATE, Encoding
from server.core.requests import TranscribeRequest, TranscribeResult, WordTiming
from server.core.scheduler import Job, JobKind
from server.core.vad import (
    SegmentAudio,
    SegmentEnded,
    Segmenter,
    SegmentEvent,
    SegmenterState,
    SegmentStarted,
)
from server.core.vad_config import VadConfig

__all__ = ["Output", "Session", "SessionConfig", "SessionError", "SessionState", "StreamFormat"]

log = logging.getLogger("dgasr.session")


class SessionState(enum.Enum):
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"
    ABORTED = "aborted"


class SessionError(RuntimeError):
    """An operation is not allowed in the session's current state."""


@dataclass(frozen=True)
class StreamFormat:
    """What the client declared about its stream (each protocol fills it from its own parameters)."""

    sample_rate: int = SAMPLE_RATE
    encoding: Encoding = Encoding.PCM_S16LE
    language: str | None = None  # None: detect
    interim_results: bool = True


@dataclass(frozen=True)
class SessionConfig:
    """Server-side settings for one session (already clamped to the server's limits)."""

    model: str
    draft_steps: int
    final_steps: int
    vad: VadConfig = VadConfig()
    partial_interval_ms: int = 450
    # A pause this long brings the drafts up to date (0: only every partial_interval_ms).
    # 150 is longer than webrtcvad's ~100 ms hangover, so a gap inside a word does not count.
    # Without it the last partial of a sentence lags it by up to 450 ms of speech until the
    # final (demo, 4 streams on 2 cores, last partials' WER off -> 150: de 26.5 -> 13.6%,
    # es 23.8 -> 13.5%, en 27.5 -> 22.8%), for 26 ms more median final latency (199 ->
    # 225 ms): the scheduler runs these drafts before others, and drafts one at a time on
    # CPU threads, so a final waits for at most one of them.
    pause_draft_ms: int = 150
    warm_start: bool = False
    seed: int = 0  # segment i's requests are seeded seed + i: same audio, same text, any batch


@dataclass
class Output:
    events: list[Event] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        self.events += other.events
        self.jobs += other.jobs
        return self


@dataclass
class _Segment:
    index: int
    start: int
    chunks: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    end: int | None = None
    drafted_at: int = 0  # segment length when the last draft was scheduled
    partial_at: int = 0  # segment length covered by the last partial sent
    canvas: tuple[int, ...] | None = None
    closed_at: float = 0.0
    final: Final | None = None

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)


class Session:
    def __init__(
        self,
        session_id: str,
        stream: StreamFormat,
        config: SessionConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = session_id
        self.stream = stream
        self.config = config
        self.state = SessionState.STREAMING
        self._clock = clock
        self._decoder = PcmDecoder(stream.encoding)
        self._resampler = StreamResampler(stream.sample_rate)
        self._segmenter = Segmenter(config.vad)
        self._segments: dict[int, _Segment] = {}
        self._next_final = 0  # next segment whose final goes out
        self._segment_count = 0
        self._input_samples = 0
        self._last_good = np.zeros(0, np.float32)  # stands in for a dropped frame
        self._close_reason = "eos"
        self._interval = int(config.partial_interval_ms * SAMPLE_RATE / 1000)
        self._pause = int(config.pause_draft_ms * SAMPLE_RATE / 1000)

    # ---- inputs ------------------------------------------------------------

    def handle(self, command: Command) -> Output:
        """One command from the client. Once the stream is ending, all but audio change nothing.

        Raises:
            SessionError: audio after the stream ended (see :meth:`feed`).
        """
        if isinstance(command, Audio):
            return self.feed(command.data)
        if self.state is not SessionState.STREAMING:
            return Output()
        if isinstance(command, Finalize):
            return self._on_events(self._segmenter.finalize())
        if isinstance(command, EndStream):
            return self.end(command.reason)
        if isinstance(command, KeepAlive):
            return Output()  # the transport resets its idle timer
        if isinstance(command, Configure):
            if command.set_language:
                self.stream = dataclasses.replace(self.stream, language=command.language)
            if command.silence_ms is not None:
                self._segmenter.set_silence_ms(command.silence_ms)
            return Output()
        raise TypeError(f"not a session command: {command!r}")

    def feed(self, data: bytes) -> Output:
        """Raw audio bytes in the declared encoding (any frame size).

        A float frame with NaN or inf samples gives a ``bad_audio`` error; its samples are
        dropped, but not its duration, so later times stay those of the client's stream.

        Raises:
            SessionError: the session no longer takes audio (after ``eos`` or a close).
        """
        self._require(SessionState.STREAMING, "feed audio")
        held = self._decoder.pending_bytes
        try:
            samples = self._decoder.feed(data)
        except BadAudio as exc:
            # Times count from the client's first sample, so the dropped frame keeps its
            # duration. It is filled with the quietest 10 ms of the last good frame: the
            # background, not speech (repeating the frame itself would extend a sentence that
            # ended just before it into the next one), and not digital silence (which would
            # drag the VAD's noise floor down and shift the next segment's start).
            count = (held + len(data) - self._decoder.pending_bytes) // self.stream.encoding.sample_width
            background = _quietest(self._last_good) if len(self._last_good) else np.zeros(1, np.float32)
            filler = np.resize(background, count)
            out = Output(events=[Problem(ProblemCode.BAD_AUDIO, str(exc))])
            return out.extend(self._process(filler))
        if len(samples):
            self._last_good = samples
        return self._process(samples)

    def end(self, reason: str) -> Output:
        """Stop taking audio (eos, idle, shutdown); finalize what is open; ``closed`` follows."""
        if self.state is not SessionState.STREAMING:
            return Output()
        self._close_reason = reason
        out = self._on_events(self._segmenter.feed(self._resampler.flush()))
        out.extend(self._on_events(self._segmenter.close()))
        self.state = SessionState.DRAINING
        return out.extend(self._release_finals())

    def abort(self) -> None:
        """The client is gone: drop buffers; the server removes its queued jobs."""
        self.state = SessionState.ABORTED
        self._segments.clear()

    # ---- engine results ----------------------------------------------------

    def update(self, job: Job, result: TranscribeResult | None, error: BaseException | None) -> Output:
        """The engine loop's update step for this session: one job's result (or failure) as events."""
        return self.job_done(job, result) if error is None and result is not None else self.job_failed(
            job, error or RuntimeError("no result"))

    def job_done(self, job: Job, result: TranscribeResult) -> Output:
        segment = self._segments.get(job.segment)
        if segment is None or self.state is SessionState.ABORTED:
            return Output()
        if job.kind is JobKind.DRAFT:
            if segment.end is not None or job.end <= segment.partial_at:
                return Output()  # segment closed meanwhile, or an older draft: drop it
            segment.partial_at = job.end
            segment.canvas = result.canvas
            draft = Draft(job.segment, result.text, self._sec(segment.start),
                          self._sec(segment.start + job.end), result.steps)
            return Output(events=[draft])
        offset = self._sec(segment.start)
        words = tuple(WordTiming(w.word, round(offset + w.start, 3), round(offset + w.end, 3), w.confidence)
                      for w in result.words)
        segment.final = Final(
            job.segment, result.text, offset, self._sec(segment.end or segment.start),
            result.steps, result.language or job.request.language, round((self._clock() - segment.closed_at) * 1000, 1),
            words,
        )
        return self._release_finals()

    def job_failed(self, job: Job, error: BaseException) -> Output:
        """A draft failure is dropped; a final failure still yields its (empty) final."""
        segment = self._segments.get(job.segment)
        if job.kind is JobKind.DRAFT or segment is None or self.state is SessionState.ABORTED:
            return Output()
        log.error("session %s segment %d: final failed: %s", self.id, job.segment, error)
        out = Output(events=[Problem(ProblemCode.INTERNAL, f"segment {job.segment} could not be transcribed")])
        segment.final = Final(job.segment, "", self._sec(segment.start), self._sec(segment.end or segment.start),
                              0, self.stream.language, round((self._clock() - segment.closed_at) * 1000, 1))
        return out.extend(self._release_finals())

    # ---- state -------------------------------------------------------------

    @property
    def pending_finals(self) -> int:
        """Segments closed whose final has not been sent yet (the server's backpressure gauge)."""
        return sum(1 for s in self._segments.values() if s.end is not None)

    @property
    def close_reason(self) -> str | None:
        return self._close_reason if self.state is not SessionState.STREAMING else None

    @property
    def audio_seconds(self) -> float:
        return self._input_samples / self.stream.sample_rate

    @property
    def segments(self) -> int:
        return self._segment_count

    # ---- internals ---------------------------------------------------------

    def _require(self, state: SessionState, action: str) -> None:
        if self.state is not state:
            raise SessionError(f"cannot {action} in state {self.state.name}")

    @staticmethod
    def _sec(sample: int) -> float:
        return round(sample / SAMPLE_RATE, 3)

    def _process(self, samples: np.ndarray) -> Output:
        self._input_samples += len(samples)
        return self._on_events(self._segmenter.feed(self._resampler.process(samples))).extend(self._pause_draft())

    def _pause_draft(self) -> Output:
        """A draft of all the speech so far, once the speaker has paused ``pause_draft_ms``."""
        if not self._pause or not self.stream.interim_results:
            return Output()
        segment = self._segments.get(self._segmenter.open_segment)
        if (segment is None or self._segmenter.state is not SegmenterState.TRAILING_SILENCE
                or segment.length <= segment.drafted_at
                or self._segmenter.position - (segment.start + segment.length) < self._pause):
            return Output()
        segment.drafted_at = segment.length
        job = self._job(segment, JobKind.DRAFT, self.config.draft_steps, self._segmenter.ending_audio())
        job.catch_up = True
        return Output(jobs=[job])

    def _on_events(self, events: list[SegmentEvent]) -> Output:
        out = Output()
        for event in events:
            if isinstance(event, SegmentStarted):
                self._segments[event.segment] = _Segment(event.segment, event.start)
                self._segment_count += 1
                out.events.append(SpeechStarted(event.segment, self._sec(event.start)))
            elif isinstance(event, SegmentAudio):
                segment = self._segments[event.segment]
                segment.chunks.append(event.samples)
                segment.length += len(event.samples)
                if self.stream.interim_results and segment.length - segment.drafted_at >= self._interval:
                    segment.drafted_at = segment.length
                    out.jobs.append(self._job(segment, JobKind.DRAFT, self.config.draft_steps))
            elif isinstance(event, SegmentEnded):
                segment = self._segments[event.segment]
                segment.end = event.end
                segment.closed_at = self._clock()
                out.events.append(SpeechStopped(event.segment, self._sec(event.end)))
                out.jobs.append(self._job(segment, JobKind.FINAL, self.config.final_steps))
                segment.chunks = []  # the final job holds the audio now
        return out

    def _job(self, segment: _Segment, kind: JobKind, steps: int, ending: np.ndarray | None = None) -> Job:
        """A job over the segment so far; ``ending``: audio after its speech, which the job hears
        but does not count as covered (a pause's draft hears the tail its final will)."""
        canvas = segment.canvas if self.config.warm_start else None
        audio = segment.audio() if ending is None else np.concatenate([segment.audio(), ending])
        request = TranscribeRequest(audio, steps, self.stream.language, seed=self.config.seed + segment.index,
                                    start_canvas=canvas, word_timings=kind is JobKind.FINAL)
        return Job(self.id, segment.index, kind, request, end=segment.length)

    def _release_finals(self) -> Output:
        out = Output()
        while (segment := self._segments.get(self._next_final)) is not None and segment.final is not None:
            out.events.append(segment.final)
            del self._segments[self._next_final]
            self._next_final += 1
        if self.state is SessionState.DRAINING and not self._segments:
            self.state = SessionState.CLOSED
            out.events.append(Ended(self._close_reason, self._segment_count, round(self.audio_seconds, 3)))
        return out


def _quietest(samples: np.ndarray, piece: int = 160) -> np.ndarray:
    """The lowest-energy ``piece`` samples (10 ms at 16 kHz) of ``samples``."""
    if len(samples) <= piece:
        return samples
    frames = samples[: len(samples) // piece * piece].reshape(-1, piece)
    return frames[int(np.argmin((frames**2).sum(axis=1)))]
