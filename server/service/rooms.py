"""Live rooms: publishers' events fanned out to subscribers, finals stored before they are shown.

How this works
--------------
:class:`RoomHub` keeps the live rooms (:class:`~server.core.rooms.Room` plus its
subscribers and a fan-out queue). A publisher's :class:`~server.service.registry.SessionSink`
calls the observer from :meth:`RoomHub.publisher` for every event of its session; the
event is translated to the room clock, encoded once, and queued on the room's fan-out
:class:`~server.service.outbox.Outbox` (bounded; stale partials are shed first, finals
never). One task per room takes the queue in order: a final is written to the
:class:`~server.service.store.TranscriptStore` first (so a final anyone saw is on disk),
then every subscriber gets the frame.

A subscriber has its own bounded outbox. Partials it cannot take are dropped; when it
cannot take a final either (its outbox is full of finals it has not read), it is cut off
with close code 1008 and a reason saying so. Nothing a subscriber does reaches back to a
publisher or to the engine: the fan-out only ever puts into memory.

Rooms leave the live list ``idle_timeout`` seconds after their last participant left
(:meth:`RoomHub.sweep`, run by the server every second); their transcripts stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from server.core.events import Draft, Event, Final
from server.core.rooms import Room, RoomEvent, check_name
from server.service.outbox import Outbox
from server.service.store import TranscriptStore

__all__ = ["RoomHub", "Subscriber", "SUBSCRIBER_QUEUE"]

log = logging.getLogger("dgasr.rooms")

SUBSCRIBER_QUEUE = (128, 256 * 1024)  # a subscriber's outbox: items, bytes
FANOUT_QUEUE = (1024, 1024 * 1024)  # a room's queue ahead of the store and the subscribers

Encode = Callable[[RoomEvent], str]


@dataclass
class Subscriber:
    id: str
    outbox: Outbox = field(default_factory=lambda: Outbox(*SUBSCRIBER_QUEUE))
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: RoomEvent, frame: str) -> None:
        if isinstance(event.event, Draft) or not self.outbox.full:
            self.outbox.put(event, frame)  # a partial replaces its stream's older one, or is shed
        else:
            self.overflowed.set()  # a final (or speech event) it has no room for: it cannot keep up


@dataclass
class _Live:
    room: Room
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    queue: Outbox = field(default_factory=lambda: Outbox(*FANOUT_QUEUE))
    task: asyncio.Task | None = None
    busy: bool = False  # an item is out of the queue and not yet fanned out


class RoomHub:
    def __init__(self, store: TranscriptStore, encode: Encode, idle_timeout: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.encode = encode
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._live: dict[str, _Live] = {}
        self._opening: dict[str, asyncio.Future] = {}

    # ---- joining -------------------------------------------------------------

    async def _enter(self, name: str) -> _Live:
        check_name(name)
        live = self._live.get(name)
        if live is not None:
            return live
        if name not in self._opening:  # two joiners at once: one opening, both wait for it
            self._opening[name] = asyncio.ensure_future(self.store.open_room(name, self.clock()))
        try:
            started = await asyncio.shield(self._opening[name])
        finally:
            self._opening.pop(name, None)
        live = self._live.get(name)
        if live is None:
            live = self._live[name] = _Live(Room(name, started))
            live.task = asyncio.create_task(self._fan_out(live), name=f"room-{name}")
        return live

    async def publisher(self, name: str, speaker: str, stream: str) -> Callable[[Event], None]:
        """Join ``stream`` to room ``name`` as ``speaker``; the sink's observer for its events."""
        live = await self._enter(name)
        live.room.join_publisher(stream, speaker, self.clock())

        def observe(event: Event) -> None:
            translated = live.room.translate(stream, event)
            if translated is not None:
                live.queue.put(translated, self.encode(translated))

        return observe

    async def subscribe(self, name: str) -> tuple[Subscriber, Room]:
        live = await self._enter(name)
        subscriber = Subscriber(uuid.uuid4().hex[:12])
        live.subscribers[subscriber.id] = subscriber
        live.room.join_subscriber(subscriber.id)
        return subscriber, live.room

    def leave(self, name: str, who: str) -> None:
        live = self._live.get(name)
        if live is not None:
            live.subscribers.pop(who, None)
            live.room.leave(who, self.clock())

    # ---- fan-out ---------------------------------------------------------------

    async def _fan_out(self, live: _Live) -> None:
        while True:
            item, frame = await live.queue.get()
            live.busy = True
            try:
                await self._deliver(live, item, frame)
            finally:
                live.busy = False

    async def _deliver(self, live: _Live, item: RoomEvent, frame: str) -> None:
        if isinstance(item.event, Final):
            try:
                await self.store.add_final(live.room.name, item.speaker, item.stream, item.event)
            except Exception:  # the store failed: subscribers still see it, the log says it is not kept
                log.exception("room %s: final %d of %s not stored", live.room.name, item.event.segment, item.stream)
        for subscriber in list(live.subscribers.values()):
            subscriber.offer(item, frame)

    async def flush(self, name: str) -> None:
        """Wait until everything published to ``name`` so far has been stored and fanned out."""
        live = self._live.get(name)
        while live is not None and (len(live.queue) or live.busy):
            await asyncio.sleep(0.01)

    # ---- listing -----------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return sum(len(live.subscribers) for live in self._live.values())

    def names(self) -> list[str]:
        return list(self._live)

    async def forget(self, name: str) -> bool:
        """Delete the room's stored transcript; a live room goes on (on the same clock)."""
        await self.flush(name)
        deleted = await self.store.delete(name)
        live = self._live.get(name)
        if live is not None:
            await self.store.open_room(name, live.room.started)
        return deleted

    def live(self, name: str) -> Room | None:
        live = self._live.get(name)
        return live.room if live is not None else None

    def sweep(self) -> list[str]:
        """Forget the rooms idle past the timeout (nothing left to fan out); their names."""
        now = self.clock()
        gone = [n for n, live in self._live.items() if live.room.expired(now, self.idle_timeout)
                and not len(live.queue) and not live.busy]
        for name in gone:
            live = self._live.pop(name)
            if live.task is not None:
                live.task.cancel()
        return gone

    async def close(self) -> None:
        for name in list(self._live):
            await self.flush(name)
            live = self._live.pop(name)
            if live.task is not None:
                live.task.cancel()
                await asyncio.gather(live.task, return_exceptions=True)
        await self.store.close()
