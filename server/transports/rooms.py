"""Meeting rooms' endpoints: the subscriber websocket, the room list, transcripts and their deletion.

How this works
--------------
- ``ws://HOST:PORT/v1/rooms/NAME``: a subscriber. It gets ``room`` first, then every
  publisher's events as the :class:`~server.service.rooms.RoomHub` fans them out (from the
  subscriber's own bounded outbox). Messages it sends are ignored (a keepalive is fine).
  Cut off with close code 1008 when it cannot keep up with the finals.
- ``GET /v1/rooms``: the rooms the store knows, live or past.
- ``GET /v1/rooms/NAME/transcript?format=json|txt|srt|vtt``: the stored finals in time order.
- ``DELETE /v1/rooms/NAME/transcript``: forget them (404 if there were none).

Publishing is not here: a publisher is a native ``/v1/listen`` session with
``room=NAME&speaker=LABEL`` (the server joins its sink to the hub).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.core.rooms import RoomError, check_name
from server.transports.http import HttpRequest, HttpResponse, json_response
from server.wire.rooms import FORMATS, render_transcript, room_hello, room_listing

if TYPE_CHECKING:
    from server.service.rooms import RoomHub

__all__ = ["RoomEndpoints", "SLOW_SUBSCRIBER_CLOSE"]

log = logging.getLogger("dgasr.rooms")

SLOW_SUBSCRIBER_CLOSE = 1008  # policy violation: it did not read the finals it was sent


def _not_found(message: str) -> HttpResponse:
    return json_response(404, {"error": "not_found", "message": message})


class RoomEndpoints:
    def __init__(self, hub: RoomHub, idle_timeout: float) -> None:
        self.hub = hub
        self.idle_timeout = idle_timeout  # a subscriber that sends nothing is still a reader: no timeout on reads

    async def subscribe(self, ws: ServerConnection, name: str) -> None:
        ws.handshake_over()
        subscriber, room = await self.hub.subscribe(name)
        log.info("room %s: subscriber %s joined (peer %s)", name, subscriber.id, getattr(ws, "peer_ip", "?"))
        reason = "client left"
        try:
            await ws.send(room_hello(room, self.hub.clock()))
            reader = asyncio.create_task(self._drain_reads(ws))
            overflow = asyncio.create_task(subscriber.overflowed.wait())
            try:
                while True:
                    getter = asyncio.create_task(subscriber.outbox.get())
                    done, _ = await asyncio.wait({getter, reader, overflow}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        if overflow in done:
                            reason = "too slow: finals were not read"
                            await ws.close(SLOW_SUBSCRIBER_CLOSE, "subscriber too slow: finals were not read")
                        return
                    await ws.send(getter.result()[1])
            finally:
                for task in (reader, overflow):
                    task.cancel()
        except ConnectionClosed:
            pass
        finally:
            self.hub.leave(name, subscriber.id)
            log.info("room %s: subscriber %s left (%s, %d partials dropped)", name, subscriber.id, reason,
                     subscriber.outbox.dropped_partials)

    @staticmethod
    async def _drain_reads(ws: ServerConnection) -> None:
        async for _ in ws:  # a subscriber has nothing to say; reading notices when it leaves
            pass

    # ---- HTTP ----------------------------------------------------------------

    async def listing(self, request: HttpRequest) -> HttpResponse:
        records = await self.hub.store.rooms()
        live = {name: room for name in self.hub.names() if (room := self.hub.live(name)) is not None}
        return json_response(200, room_listing(records, live))

    async def transcript(self, request: HttpRequest, name: str) -> HttpResponse:
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            return json_response(400, {"error": "bad_request", "field": "format",
                                       "message": f"expected one of {', '.join(FORMATS)}, got {fmt[:40]!r}"})
        try:
            check_name(name)
        except RoomError as exc:
            return _not_found(str(exc))
        await self.hub.flush(name)  # a final already fanned out is also in the answer
        finals = await self.hub.store.transcript(name)
        if not finals and self.hub.live(name) is None and name not in {r.name for r in await self.hub.store.rooms()}:
            return _not_found(f"no room {name}")
        content_type, body = render_transcript(name, finals, fmt)
        return HttpResponse(200, body.encode(), content_type)

    async def delete(self, request: HttpRequest, name: str) -> HttpResponse:
        if not await self.hub.forget(name):
            return _not_found(f"no transcript for room {name}")
        return json_response(200, {"deleted": name})

