"""The server's Prometheus metrics, one registry per server, served at ``GET /metrics``.

How this works
--------------
:class:`Metrics` owns a private ``CollectorRegistry`` (so two servers in one process,
as in the tests, never share counts) with every series dgasr exports. The places that
know a number report it here and nowhere else:

- each session's :class:`~server.service.registry.SessionSink` calls
  :meth:`ProtocolMetrics.event` for every event it routes to its client (finals,
  partials, first-partial latency) and :meth:`ProtocolMetrics.dropped` when the outbox
  drops a stale partial;
- the transport opens and closes sessions (:meth:`ProtocolMetrics.opened` /
  :meth:`ProtocolMetrics.closed`, which adds the session's audio seconds);
- the :class:`~server.service.loop.EngineLoop` reports each batch (:meth:`Metrics.batch`):
  its size, each job's queue wait, and the device time, from which the busy ratio over
  the last minute is computed at scrape time.

Counts are of what was routed to clients: ``dgasr_finals_total`` is the number of final
messages sent; partials sent = ``dgasr_partials_total - dgasr_partials_dropped_total``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from server.core.events import Draft, Event, Final, SpeechStarted

__all__ = ["CONTENT_TYPE", "Metrics", "ProtocolMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BUSY_WINDOW_SECONDS = 60.0


class ProtocolMetrics:
    """The series of one protocol (``v1``, ``deepgram``, ``realtime``, ``openai_files``), bound."""

    def __init__(self, metrics: Metrics, protocol: str) -> None:
        m = metrics
        self._active = m.sessions_active.labels(protocol)
        self._sessions = m.sessions.labels(protocol)
        self._finals = m.finals.labels(protocol)
        self._partials = m.partials.labels(protocol)
        self._dropped = m.partials_dropped.labels(protocol)
        self._audio = m.audio_seconds.labels(protocol)
        self._final_latency = m.final_latency.labels(protocol)
        self._first_partial = m.first_partial_latency.labels(protocol)

    def opened(self) -> None:
        self._sessions.inc()
        self._active.inc()

    def closed(self, audio_seconds: float) -> None:
        self._active.dec()
        self._audio.inc(max(0.0, audio_seconds))

    def dropped(self, count: int = 1) -> None:
        self._dropped.inc(count)

    def sink_observer(self, clock: Callable[[], float] = time.monotonic) -> Callable[[Event], None]:
        """A per-session callback for the sink: counts events, times each segment's first partial."""
        started: dict[int, float] = {}  # segments waiting for their first partial (bounded by open segments)

        def observe(event: Event) -> None:
            if isinstance(event, SpeechStarted):
                started[event.segment] = clock()
            elif isinstance(event, Draft):
                self._partials.inc()
                t0 = started.pop(event.segment, None)
                if t0 is not None:
                    self._first_partial.observe(clock() - t0)
            elif isinstance(event, Final):
                started.pop(event.segment, None)
                self._finals.inc()
                self._final_latency.observe(event.latency_ms / 1000)

        return observe


class Metrics:
    """Every dgasr series, in this server's own registry."""

    def __init__(self, device_memory: Callable[[], float] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        label = ["protocol"]
        self.sessions_active = Gauge("dgasr_sessions_active", "Sessions open now", label, registry=r)
        self.sessions = Counter("dgasr_sessions", "Sessions started", label, registry=r)
        self.finals = Counter("dgasr_finals", "Final transcripts sent", label, registry=r)
        self.partials = Counter("dgasr_partials", "Partial (draft) transcripts produced", label, registry=r)
        self.partials_dropped = Counter("dgasr_partials_dropped", "Partials dropped unsent (a newer one replaced "
                                        "it, or the client read too slowly)", label, registry=r)
        self.audio_seconds = Counter("dgasr_audio_seconds", "Seconds of audio received, per ended session", label,
                                     registry=r)
        self.final_latency = Histogram("dgasr_final_latency_seconds", "From a segment's end to its final",
                                       label, buckets=LATENCY_BUCKETS, registry=r)
        self.first_partial_latency = Histogram("dgasr_first_partial_latency_seconds",
                                               "From speech detected to the segment's first partial", label,
                                               buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("dgasr_batch_size", "Requests per engine batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_wait = Histogram("dgasr_queue_wait_seconds", "From a job's submission to its batch's start",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.engine_busy = Counter("dgasr_engine_busy_seconds", "Device time spent on batches", registry=r)
        busy = Gauge("dgasr_engine_busy_ratio", f"Share of the last {BUSY_WINDOW_SECONDS:g} s the device "
                     "spent on batches", registry=r)
        busy.set_function(self.busy_ratio)
        if device_memory is not None:
            memory = Gauge("dgasr_device_memory_bytes", "Device memory allocated by the engine", registry=r)
            memory.set_function(device_memory)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self._started = time.monotonic()
        self._batches: deque[tuple[float, float]] = deque(maxlen=10_000)  # (end, seconds) of recent batches
        self._protocols: dict[str, ProtocolMetrics] = {}

    def protocol(self, name: str) -> ProtocolMetrics:
        if name not in self._protocols:
            self._protocols[name] = ProtocolMetrics(self, name)
        return self._protocols[name]

    def batch(self, size: int, waits: list[float], seconds: float) -> None:
        """One engine batch: its size, each job's queue wait, its device time (all seconds)."""
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.engine_busy.inc(seconds)
        self._batches.append((time.monotonic(), seconds))

    def busy_ratio(self) -> float:
        now = time.monotonic()
        window = min(BUSY_WINDOW_SECONDS, max(now - self._started, 1e-9))
        busy = sum(min(seconds, end - (now - window)) for end, seconds in self._batches if end > now - window)
        return min(1.0, busy / window)

    def render(self) -> bytes:
        return generate_latest(self.registry)
