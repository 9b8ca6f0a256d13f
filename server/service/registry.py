"""The live sessions, each with its sink, and the engine loop's update step.

How this works
--------------
Every transport connection, whatever its protocol, registers one :class:`SessionSink`:
the core :class:`~server.core.session.Session`, the protocol's event encoder and a
bounded :class:`~server.service.outbox.Outbox`. :meth:`SessionSink.route` is the one
place a session's output goes: events, encoded once, to the outbox; jobs to the engine
loop. :meth:`SessionRegistry.deliver` is the loop's update step: it finds the session a
result belongs to, lets the session turn it into events (``Session.update``) and routes
them, without ever touching a socket. A result for a session that has gone is dropped.

Backpressure: the sink's ``room`` is clear while the session has ``max_pending_finals``
finals in the works or its outbox is full; transports stop reading audio until it is
set again, so a client faster than the device, or one that does not read, is slowed by
TCP instead of growing server memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server.core.events import Draft, Ended, Event, Final
from server.core.requests import TranscribeResult
from server.core.scheduler import Job
from server.core.session import Output, Session
from server.service.loop import EngineLoop
from server.service.metrics import ProtocolMetrics
from server.service.outbox import Outbox

__all__ = ["SessionRegistry", "SessionSink"]

log = logging.getLogger("dgasr.transcripts")

Encoder = Callable[[Event], list[str | bytes]]  # an event as the protocol's frames (none: not sent)


class SessionSink:
    """One session's way out: encoded events into its outbox, jobs into the engine loop."""

    def __init__(self, session: Session, loop: EngineLoop, encode: Encoder, *,
                 max_pending_finals: int = 4, outbox_limit: int = 256, outbox_bytes: int = 256 * 1024,
                 metrics: ProtocolMetrics | None = None, log_finals: bool = False) -> None:
        self.session = session
        self.loop = loop
        self.encode = encode
        self.outbox = Outbox(outbox_limit, outbox_bytes)
        self.max_pending_finals = max_pending_finals
        self.partials = 0
        self.finals = 0
        self.room = asyncio.Event()
        self.room.set()
        self.metrics = metrics
        self._observers: list[Callable[[Event], None]] = [metrics.sink_observer()] if metrics is not None else []
        self._log_finals = log_finals  # --log-transcripts: off, logs never hold what was said

    @property
    def id(self) -> str:
        return self.session.id

    def route(self, out: Output) -> None:
        dropped = self.outbox.dropped_partials
        for event in out.events:
            for observe in self._observers:
                observe(event)
            frames = self.encode(event)
            if not frames and isinstance(event, Ended):
                frames = [""]  # the writer must still see Ended, to close
            for i, frame in enumerate(frames):  # the event rides on its last frame (Ended: close after it)
                self.outbox.put(event if i == len(frames) - 1 else None, frame)
            if isinstance(event, Final):
                self.finals += 1
                if self._log_finals:
                    log.info("session %s final %d [%.2f-%.2f]: %s", self.id, event.segment, event.start, event.end,
                             event.text)
            elif isinstance(event, Draft):
                self.partials += 1
        if self.metrics is not None and self.outbox.dropped_partials > dropped:
            self.metrics.dropped(self.outbox.dropped_partials - dropped)
        if out.jobs:
            self.loop.submit(out.jobs)
        self.update_room()

    def add_observer(self, observe: Callable[[Event], None]) -> None:
        """Also show every routed event to ``observe`` (a room the session publishes into)."""
        self._observers.append(observe)

    def send(self, message: object, frame: str | bytes) -> None:
        """A protocol's own message (v1's ``ready``): never dropped."""
        self.outbox.put(message, frame)
        self.update_room()

    def update_room(self) -> None:
        if self.session.pending_finals < self.max_pending_finals and not self.outbox.full:
            self.room.set()
        else:
            self.room.clear()


class SessionRegistry:
    """Sessions by id; the engine loop's ``deliver`` callback."""

    def __init__(self) -> None:
        self._sinks: dict[str, SessionSink] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, sink: SessionSink) -> None:
        self._sinks[sink.id] = sink
        self._empty.clear()

    def remove(self, session_id: str) -> None:
        self._sinks.pop(session_id, None)
        if not self._sinks:
            self._empty.set()

    @property
    def empty(self) -> bool:
        return not self._sinks

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def deliver(self, job: Job, result: TranscribeResult | None, error: BaseException | None) -> None:
        """The update step: an engine result becomes its session's events, routed to its sink."""
        sink = self._sinks.get(job.session)
        if sink is not None:  # the client left: its results are simply dropped
            sink.route(sink.session.update(job, result, error))
