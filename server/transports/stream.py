"""A streaming websocket session, for any protocol: frames to session commands, events to frames.

How this works
--------------
One :class:`StreamConnection` per client; the protocol is its :class:`Codec` (v1's in
:mod:`server.wire.v1`, Deepgram's in :mod:`server.wire.deepgram`). A reader coroutine
pulls frames from the socket: binary frames are ``Audio`` commands, text frames go
through the codec (a frame it cannot read is a ``bad_message`` problem, and the session
goes on). A writer task drains the session's outbox (:class:`~server.service.registry.SessionSink`,
which encodes each event once through the codec) into the socket, and closes it with
1000 after the frames of ``Ended``. Everything between, the session, the engine loop
and backpressure, lives in the layers below; this module only does socket I/O and the
timeouts a socket needs (idle reader, stalled writer, bounded drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.core.events import (
    Audio,
    Command,
    Ended,
    EndStream,
    Event,
    Problem,
    ProblemCode,
)
from server.core.session import Output, Session, SessionState
from server.service.loop import EngineLoop
from server.service.metrics import ProtocolMetrics
from server.service.registry import SessionSink
from server.wire import BadFrame, Reply

__all__ = ["Codec", "StreamConnection"]

log = logging.getLogger("dgasr.server")

# During shutdown, a client that takes nothing from its socket for this long is given up
# on (its finals cannot be delivered anyway), so one non-reading client cannot hold a
# server's stop for the whole drain.
SHUTDOWN_STALL_SECONDS = 2.0


class Codec(Protocol):
    """One protocol's frames, as a streaming session sees them."""

    def opening(self, session: Session) -> list[str | bytes]:
        """Frames to send as soon as the session exists (v1's ``ready``)."""

    def decode(self, text: str) -> Command | Reply:
        """A client text frame as a command (or a reply of the codec's own); raises :class:`~server.wire.BadFrame`."""

    def encode(self, event: Event) -> list[str | bytes]:
        """The frames for one session event (none: the protocol has no message for it)."""


class StreamConnection:
    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        loop: EngineLoop,
        codec: Codec,
        *,
        idle_timeout: float,
        max_pending_finals: int = 4,
        outbox_limit: int = 256,
        drain_timeout: float = 120.0,
        metrics: ProtocolMetrics | None = None,
        log_finals: bool = False,
    ) -> None:
        self.ws = ws
        self.session = session
        self.loop = loop
        self.codec = codec
        self.sink = SessionSink(session, loop, codec.encode, max_pending_finals=max_pending_finals,
                                outbox_limit=outbox_limit, metrics=metrics, log_finals=log_finals)
        self.outbox = self.sink.outbox
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.opened = time.monotonic()
        self.feed_seconds = 0.0  # CPU spent decoding, resampling and segmenting this client's audio
        self._reader: asyncio.Task | None = None
        self._stalled = False  # the client stopped reading: its drain is bounded by the idle timeout
        self._shutting_down = False
        self._sending = False  # the writer is blocked in a send
        self._sent = 0  # frames sent: progress, for the drain's stall check

    def route(self, out: Output) -> None:
        self.sink.route(out)

    def shutdown(self) -> None:
        """Server is stopping: finalize everything open, let the writer send it, then close."""
        self._shutting_down = True
        self.route(self.session.handle(EndStream("shutdown")))
        if self._reader is not None:
            self._reader.cancel()

    # ---- tasks -------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until ``closed`` is sent or the client vanishes.

        Ends when the reader is done (eos, idle, shutdown) and the writer has drained, or as
        soon as the writer fails (the socket is gone: a client that stopped reading and
        then reset must not leave its reader waiting for room that never comes).
        """
        writer = asyncio.create_task(self._write(), name=f"writer-{self.session.id}")
        self._reader = asyncio.create_task(self._read(), name=f"reader-{self.session.id}")
        try:
            for frame in self.codec.opening(self.session):
                self.sink.send(None, frame)
            done, _ = await asyncio.wait({self._reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if self._reader in done:
                if not self._reader.cancelled():  # cancelled = shutdown(), which already ended the session
                    self._reader.result()
                drain = self.idle_timeout if self._stalled else self.drain_timeout
                stall = SHUTDOWN_STALL_SECONDS if self._shutting_down else self.idle_timeout
                await self._drain(writer, drain, stall)
            else:
                writer.result()
        except (ConnectionClosed, TimeoutError) as exc:
            log.info("session %s: client gone or too slow (%s)", self.session.id, type(exc).__name__)
        finally:
            for task in (self._reader, writer):
                task.cancel()
            await asyncio.gather(self._reader, writer, return_exceptions=True)
            if self.session.state is not SessionState.CLOSED:
                self.session.abort()
            self.loop.forget_session(self.session.id)

    async def _drain(self, writer: asyncio.Task, limit: float, stall: float) -> None:
        """Wait for the writer to send everything; TimeoutError after ``limit`` s, or after ``stall``
        s in which it had something to send and sent nothing (the client is not reading).

        Finals still being computed are not a stall (nothing waits to be sent), so a busy
        device never cuts a drain short; a client that stops reading during shutdown
        holds the server for ``stall`` seconds, not for the whole drain.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not writer.done():
            sent = self._sent
            await asyncio.wait({writer}, timeout=max(0.0, min(stall, deadline - loop.time())))
            if writer.done():
                break
            if loop.time() >= deadline or (self._sent == sent and (self._sending or len(self.outbox))):
                raise TimeoutError
        writer.result()

    async def _wait_for_room(self) -> bool:
        """Wait until the session may take more audio; False if the client stopped reading.

        Room runs out for two reasons: finals still being computed (the device is busy:
        wait as long as it takes) or a full outbox (the client is not reading: after the
        idle timeout, give up on it).
        """
        while not self.sink.room.is_set():
            try:
                async with asyncio.timeout(self.idle_timeout):
                    await self.sink.room.wait()
            except TimeoutError:
                if self.outbox.full:
                    return False
        return True

    def _time_out(self, reason: str, what: str) -> None:
        """A fatal timeout error, then the session ends with ``reason`` (its finals still follow)."""
        notice = Problem(ProblemCode.TIMEOUT, f"{what} for {self.idle_timeout:g} s", fatal=True)
        self.route(Output(events=[notice]).extend(self.session.handle(EndStream(reason))))

    async def _read(self) -> None:
        session = self.session
        while session.state is SessionState.STREAMING:
            if not await self._wait_for_room():
                self._stalled = True
                return self._time_out("stalled", "client read nothing")
            try:
                async with asyncio.timeout(self.idle_timeout):
                    frame = await self.ws.recv()
            except TimeoutError:
                return self._time_out("idle", "no audio or keepalive")
            if isinstance(frame, bytes):
                t0 = time.perf_counter()
                out = session.handle(Audio(frame))
                self.feed_seconds += time.perf_counter() - t0
                self.route(out)
                continue
            try:
                decoded = self.codec.decode(frame)
            except BadFrame as exc:
                self.route(Output(events=[Problem(ProblemCode.BAD_MESSAGE, str(exc))]))
                continue
            reply = decoded if isinstance(decoded, Reply) else Reply(command=decoded)
            if reply.command is not None:
                self.route(session.handle(reply.command))
            for text in reply.frames:
                self.sink.send(None, text)

    async def _write(self) -> None:
        while True:
            message, text = await self.outbox.get()
            self.sink.update_room()
            self._sending = True
            if text:  # an event without frames (Ended in OpenAI's protocol) sends nothing
                await self.ws.send(text)
            self._sending = False
            self._sent += 1
            if isinstance(message, Ended):
                await self.ws.close(1000)
                return
