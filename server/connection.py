"""One websocket client: the thin asyncio adapter around a :class:`~server.session.Session`.

How this works
--------------
A reader coroutine pulls frames from the socket and feeds the session; a writer task
drains the session's :class:`Outbox` into the socket. Session outputs are routed by
:meth:`Connection.route`: messages to the outbox, jobs to the engine loop. Nothing on
the engine side ever awaits the socket.

Flow control instead of unbounded buffers: the outbox holds at most ``limit`` messages
and, when it fills, drops stale partials first (a newer partial of a segment replaces
the queued one; finals are never dropped). The reader stops reading audio while the
session has ``max_pending_finals`` finals in the works or the outbox is full, so a
client that sends faster than the device transcribes, or reads too slowly, is slowed
down by TCP backpressure rather than growing server memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .core import EngineLoop
from .protocol import Closed, Error, ErrorCode, Partial, ServerMessage
from .session import Output, Session, SessionState

__all__ = ["Outbox", "Connection"]

log = logging.getLogger("dgasr.server")


class Outbox:
    """Outgoing messages, bounded in count and in bytes; sheds partials and errors, never finals.

    Each message is serialized once, on the way in, so its size is known. When the queue is
    full (``limit`` messages or ``limit_bytes`` of JSON), a new partial or non-fatal error
    is dropped and counted; a final, ``ready``, ``speech_started``, a fatal error and
    ``closed`` are always kept: they are few per segment, and the reader stops taking
    audio while the box is full, so they cannot grow without bound either.
    """

    def __init__(self, limit: int = 256, limit_bytes: int = 256 * 1024) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._items: deque[tuple[ServerMessage, str]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.dropped_partials = 0
        self.dropped_errors = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return len(self._items) >= self.limit or self._bytes >= self.limit_bytes

    def put(self, message: ServerMessage) -> None:
        text = message.to_json()
        if isinstance(message, Partial):
            for i, (queued, old) in enumerate(self._items):
                if isinstance(queued, Partial) and queued.segment == message.segment:
                    self._items[i] = (message, text)  # the client only needs the newest partial
                    self._bytes += len(text) - len(old)
                    self.dropped_partials += 1
                    return
            if self.full:
                self.dropped_partials += 1
                return
        elif isinstance(message, Error) and not message.fatal and self.full:
            self.dropped_errors += 1
            return
        self._items.append((message, text))
        self._bytes += len(text)
        self._ready.set()

    async def get(self) -> tuple[ServerMessage, str]:
        """The oldest message and its JSON."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        message, text = self._items.popleft()
        self._bytes -= len(text)
        return message, text


class Connection:
    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        loop: EngineLoop,
        *,
        idle_timeout: float,
        max_pending_finals: int = 4,
        outbox_limit: int = 256,
        drain_timeout: float = 120.0,
    ) -> None:
        self.ws = ws
        self.session = session
        self.loop = loop
        self.outbox = Outbox(outbox_limit)
        self.idle_timeout = idle_timeout
        self.max_pending_finals = max_pending_finals
        self.drain_timeout = drain_timeout
        self.opened = time.monotonic()
        self.partials = 0
        self.finals = 0
        self.feed_seconds = 0.0  # CPU spent decoding, resampling and segmenting this client's audio
        self._room = asyncio.Event()
        self._room.set()
        self._reader: asyncio.Task | None = None
        self._stalled = False  # the client stopped reading: its drain is bounded by the idle timeout

    # ---- routing -----------------------------------------------------------

    def route(self, out: Output) -> None:
        for message in out.messages:
            self.outbox.put(message)
            if message.type == "final":
                self.finals += 1
            elif message.type == "partial":
                self.partials += 1
        if out.jobs:
            self.loop.submit(out.jobs)
        self._update_room()

    def _update_room(self) -> None:
        if self.session.pending_finals < self.max_pending_finals and not self.outbox.full:
            self._room.set()
        else:
            self._room.clear()

    def shutdown(self) -> None:
        """Server is stopping: finalize everything open, let the writer send it, then close."""
        self.route(self.session.end("shutdown"))
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
            self.outbox.put(self.session.ready())
            done, _ = await asyncio.wait({self._reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if self._reader in done:
                if not self._reader.cancelled():  # cancelled = shutdown(), which already ended the session
                    self._reader.result()
                drain = self.idle_timeout if self._stalled else self.drain_timeout
                await asyncio.wait_for(asyncio.shield(writer), drain)
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

    async def _wait_for_room(self) -> bool:
        """Wait until the session may take more audio; False if the client stopped reading.

        Room runs out for two reasons: finals still being computed (the device is busy:
        wait as long as it takes) or a full outbox (the client is not reading: after the
        idle timeout, give up on it).
        """
        while not self._room.is_set():
            try:
                async with asyncio.timeout(self.idle_timeout):
                    await self._room.wait()
            except TimeoutError:
                if self.outbox.full:
                    return False
        return True

    def _time_out(self, reason: str, what: str) -> None:
        """A fatal timeout error, then the session ends with ``reason`` (its finals still follow)."""
        notice = Error(ErrorCode.TIMEOUT.value, f"{what} for {self.idle_timeout:g} s", fatal=True)
        self.route(Output(messages=[notice]).extend(self.session.end(reason)))

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
                out = session.feed(frame)
                self.feed_seconds += time.perf_counter() - t0
                self.route(out)
            else:
                self.route(session.text(frame))

    async def _write(self) -> None:
        while True:
            message, text = await self.outbox.get()
            self._update_room()
            await self.ws.send(text)
            if isinstance(message, Closed):
                await self.ws.close(1000)
                return
