"""A session's outgoing queue: bounded in count and bytes, shedding what a newer item replaces.

How this works
--------------
The service puts a session's events here as they happen (the engine loop's update step
never waits on a socket); the transport's writer takes them out at the client's pace.
Drafts are the only thing worth dropping: a newer draft of the same segment replaces a
queued one in place, and a full box drops new drafts and non-fatal problems. Everything
else is kept, and the transport stops reading audio while the box is full, which is what
bounds the rest.
"""

from __future__ import annotations

import asyncio
from collections import deque

from server.core.events import Draft, Problem
from server.core.rooms import RoomEvent

__all__ = ["Outbox"]


class Outbox:
    """Outgoing events of one session, bounded in count and in bytes; sheds drafts and errors, never finals.

    Each item is an event (or a protocol's own message, such as v1's ``ready``) with its
    encoded frame, made once on the way in, so its size is known. When the queue is full
    (``limit`` items or ``limit_bytes`` of frames), a new draft or non-fatal problem is
    dropped and counted; a final, ``SpeechStarted``, a fatal problem, ``Ended`` and any
    protocol message are always kept: they are few per segment, and the reader stops
    taking audio while the box is full, so they cannot grow without bound either.
    """

    def __init__(self, limit: int = 256, limit_bytes: int = 256 * 1024) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._items: deque[tuple[object, str | bytes]] = deque()
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

    def put(self, message: object, text: str | bytes) -> None:
        """Queue ``message`` (an event, or a protocol message) as the frame ``text``."""
        key = _draft_key(message)
        if key is not None:
            for i, (queued, old) in enumerate(self._items):
                if _draft_key(queued) == key:
                    self._items[i] = (message, text)  # the client only needs the newest partial
                    self._bytes += len(text) - len(old)
                    self.dropped_partials += 1
                    return
            if self.full:
                self.dropped_partials += 1
                return
        elif isinstance(message, Problem) and not message.fatal and self.full:
            self.dropped_errors += 1
            return
        self._items.append((message, text))
        self._bytes += len(text)
        self._ready.set()

    async def get(self) -> tuple[object, str | bytes]:
        """The oldest item and its frame."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        message, text = self._items.popleft()
        self._bytes -= len(text)
        return message, text


def _draft_key(message: object) -> tuple[str, int] | None:
    """Which partial a message is (a newer one replaces it): a session's draft by its segment,
    a room's by its publisher's stream and segment; None for everything else."""
    if isinstance(message, Draft):
        return "", message.segment
    if isinstance(message, RoomEvent) and isinstance(message.event, Draft):
        return message.stream, message.event.segment
    return None
