"""Whole files through the streaming core: the same segments, seeds and finals as a live stream.

How this works
--------------
A file is one :class:`~server.core.session.Session` without drafts (``interim_results``
off): its samples go in as 1 s ``Audio`` commands, then ``EndStream``; the session's VAD
cuts it into segments exactly as it would a live stream of the same audio, and each
segment's final request is seeded by its index. Two drivers run those requests:

- :func:`transcribe_offline` (``dgasr-transcribe``) hands them straight to an
  :class:`~server.engine.Engine`, several files' segments per batch;
- :func:`transcribe_served` (``POST /v1/audio/transcriptions``) registers the session with
  the server's :class:`~server.service.registry.SessionRegistry`, so its finals are
  batched and scheduled with the live sessions' work by the one engine loop, and a
  shutdown waits for them like any session's.

Either way the finals are the session's own ``Final`` events, in segment order, so the
same file gives the same text, segments and word timings from the CLI and the endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from server.core.events import Audio, Ended, EndStream, Event, Final, Problem
from server.core.pcm import SAMPLE_RATE, Encoding
from server.core.scheduler import Job
from server.core.session import (
    Output,
    Session,
    SessionConfig,
    SessionState,
    StreamFormat,
)
from server.service.loop import EngineLoop
from server.service.metrics import ProtocolMetrics
from server.service.registry import SessionRegistry, SessionSink

__all__ = ["FEED_SECONDS", "FileResult", "file_session", "transcribe_offline", "transcribe_served"]

FEED_SECONDS = 1.0  # audio per Audio command: the VAD sees a file as a stream of 1 s frames


@dataclass
class FileResult:
    """One file's finals (in order) and any problems the engine reported."""

    duration: float
    finals: list[Final] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals if f.text)

    def take(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Final):
                self.finals.append(event)
            elif isinstance(event, Problem):
                self.problems.append(event)


def file_session(config: SessionConfig, language: str | None) -> Session:
    """A draft-free session reading 16 kHz float32 samples."""
    stream = StreamFormat(SAMPLE_RATE, Encoding.PCM_F32LE, language, interim_results=False)
    return Session("file-" + uuid.uuid4().hex[:8], stream, config)


def _chunks(audio: np.ndarray) -> Iterator[Audio]:
    step = int(FEED_SECONDS * SAMPLE_RATE)
    samples = np.ascontiguousarray(audio, dtype="<f4")
    for i in range(0, len(samples), step):
        yield Audio(samples[i : i + step].tobytes())


def transcribe_offline(engine, files: list[tuple[Session, np.ndarray]], batch_size: int = 8) -> list[FileResult]:
    """Every file's finals, running the sessions' requests on ``engine`` directly."""
    results = [FileResult(len(audio) / SAMPLE_RATE) for _, audio in files]
    pending: list[tuple[int, Job]] = []

    def take(index: int, out: Output) -> None:
        results[index].take(out.events)
        pending.extend((index, job) for job in out.jobs)

    for index, (session, audio) in enumerate(files):
        for command in _chunks(audio):
            take(index, session.handle(command))
        take(index, session.handle(EndStream("eos")))
    while pending:
        batch, pending[:] = pending[: max(1, batch_size)], pending[max(1, batch_size) :]
        outcomes = engine.transcribe([job.request for _, job in batch])
        for (index, job), result in zip(batch, outcomes):
            take(index, files[index][0].update(job, result, None))
    return results


async def transcribe_served(session: Session, audio: np.ndarray, registry: SessionRegistry, loop: EngineLoop,
                            on_final: Callable[[Final], None] | None = None,
                            metrics: ProtocolMetrics | None = None) -> FileResult:
    """One file's finals through the server's engine loop, as one more registered session.

    Audio goes in only while the session has room (at most a few finals in the works),
    so a long file never queues more than that much work ahead of the live sessions.
    ``on_final`` sees each final as it is released (in order), for streamed answers.
    """
    result = FileResult(len(audio) / SAMPLE_RATE)

    def collect(event: Event) -> list[str | bytes]:
        result.take([event])
        if on_final is not None and isinstance(event, Final):
            on_final(event)
        return []  # nothing to send: the HTTP response is written from the result

    sink = SessionSink(session, loop, collect, metrics=metrics)
    registry.add(sink)
    if metrics is not None:
        metrics.opened()
    try:
        for command in _chunks(audio):
            await sink.room.wait()
            sink.route(session.handle(command))
        sink.route(session.handle(EndStream("eos")))
        while True:
            message, _ = await sink.outbox.get()
            sink.update_room()
            if isinstance(message, Ended):
                return result
    finally:
        if metrics is not None:
            metrics.closed(session.audio_seconds)
        registry.remove(session.id)
        loop.forget_session(session.id)
        if session.state not in (SessionState.CLOSED, SessionState.ABORTED):
            session.abort()
