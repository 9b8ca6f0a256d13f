"""Where a connection's sender takes its audio from: a source directly, or a replay backlog.

How this works
--------------
:class:`IteratorFeed` wraps a file or stdin source's chunk iterator; ``finish`` (Ctrl-C)
cuts it off at once. :class:`Backlog` holds captured microphone audio that no final has
covered yet; it outlives connections, so after a drop the next connection's
:class:`BacklogFeed` starts at the oldest kept chunk and the open segment is transcribed
again. ``finish`` on a backlog feed stops the capture instead, so audio captured up to
the Ctrl-C is still sent before ``eos``. All of it runs on the event loop; nothing here
needs a lock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

__all__ = ["AudioFeed", "IteratorFeed", "Backlog", "BacklogFeed"]


class AudioFeed:
    """Where a connection's sender takes its chunks from."""

    async def next(self) -> bytes | None:
        """The next chunk, or None when the input has ended (then ``eos`` is sent)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Stop taking new input (Ctrl-C); ``next`` returns None soon after."""
        raise NotImplementedError


class IteratorFeed(AudioFeed):
    """A file or stdin: chunks straight from the source; ``finish`` cuts it off at once."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._finished = asyncio.Event()

    async def next(self) -> bytes | None:
        if self._finished.is_set():
            return None
        get = asyncio.ensure_future(anext(self._chunks, None))
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            done, _ = await asyncio.wait({get, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the sender itself is cancelled: leave no task behind
            finished.cancel()
            if not get.done():
                get.cancel()
        return get.result() if get in done else None

    def finish(self) -> None:
        self._finished.set()


class Backlog:
    """Captured mic audio kept until a final covers it, so a new connection can replay it.

    Chunks are addressed by sequence number. ``commit(t)`` frees chunks that end at or
    before stream time ``t``; beyond ``max_seconds`` the oldest chunks go regardless (a
    long silence produces no final), which only matters if a reconnect follows.
    """

    def __init__(self, bytes_per_second: int, max_seconds: float = 60.0) -> None:
        self._bps = bytes_per_second
        self._max_bytes = int(max_seconds * bytes_per_second)
        self._chunks: deque[bytes] = deque()
        self._first_seq = 0
        self._first_byte = 0
        self._bytes = 0
        self._ended = False
        self._changed = asyncio.Event()
        self.skipped_seconds = 0.0  # dropped before any connection sent them

    @property
    def first_seq(self) -> int:
        return self._first_seq

    @property
    def start_seconds(self) -> float:
        """Stream time of the oldest chunk kept: where a replaying connection starts."""
        return self._first_byte / self._bps

    @property
    def kept_seconds(self) -> float:
        return self._bytes / self._bps

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._bytes += len(chunk)
        while self._bytes > self._max_bytes and len(self._chunks) > 1:
            self._pop()
        self._changed.set()

    def commit(self, seconds: float) -> None:
        limit = round(seconds * self._bps)
        while self._chunks and self._first_byte + len(self._chunks[0]) <= limit:
            self._pop()

    def _pop(self) -> None:
        chunk = self._chunks.popleft()
        self._first_seq += 1
        self._first_byte += len(chunk)
        self._bytes -= len(chunk)

    def end(self) -> None:
        """No more audio will come: readers get None once they have read it all."""
        self._ended = True
        self._changed.set()

    async def read(self, seq: int) -> tuple[int, bytes] | None:
        """The chunk at ``seq`` (or the oldest kept, if ``seq`` was already dropped)."""
        while True:
            if seq < self._first_seq:
                skipped = self._chunks_bytes_between(seq)
                self.skipped_seconds += skipped / self._bps
                seq = self._first_seq
            index = seq - self._first_seq
            if index < len(self._chunks):
                return seq + 1, self._chunks[index]
            if self._ended:
                return None
            self._changed.clear()
            await self._changed.wait()

    def _chunks_bytes_between(self, seq: int) -> int:
        # Dropped chunks are gone; estimate with the current chunk size (all equal for a mic).
        size = len(self._chunks[0]) if self._chunks else 0
        return (self._first_seq - seq) * size


class BacklogFeed(AudioFeed):
    """One connection's cursor into the shared :class:`Backlog`."""

    def __init__(self, backlog: Backlog, on_finish: Callable[[], None]) -> None:
        self._backlog = backlog
        self._seq = backlog.first_seq
        self._on_finish = on_finish
        self.start_seconds = backlog.start_seconds

    async def next(self) -> bytes | None:
        got = await self._backlog.read(self._seq)
        if got is None:
            return None
        self._seq, chunk = got
        return chunk

    def finish(self) -> None:
        # Stopping the capture ends the pump, which ends the backlog: what was captured
        # up to the Ctrl-C is still sent before eos.
        self._on_finish()
