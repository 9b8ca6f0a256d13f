"""Plain HTTP requests on the websocket port: the first bytes of a connection decide who reads it.

How this works
--------------
websockets parses only ``GET`` requests (the websocket upgrades, and the GET endpoints
its ``process_request`` hook answers), so an upload such as ``POST
/v1/audio/transcriptions`` needs a reader of its own on the same port. Every accepted
socket starts with a :class:`FrontDoor`, an asyncio protocol that

1. counts the socket with :class:`~server.service.admission.Admission` at once (so idle
   sockets stay bounded by the pending-handshake limit, whatever they turn out to be),
2. waits (at most the handshake timeout) for the request line's method,
3. hands the transport over (``transport.set_protocol``), replaying what it read: to
   websockets' own connection for ``GET``, to :func:`serve_exchange` for anything else.

:func:`serve_exchange` reads one request with h11 (head at most 16 KiB, body at most
``max_body`` bytes, each read within ``read_timeout``), answers 404/405/413/408/400
itself, passes a complete request to its route's handler, writes the handler's
:class:`HttpResponse` (or :class:`HttpStream`, sent chunked), and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import h11
from websockets.asyncio.server import ServerConnection
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

from server.service.access import Access, strip_token
from server.service.admission import Admission
from server.wire.openai_audio import error_body

__all__ = ["FrontDoor", "HttpRequest", "HttpResponse", "HttpStream", "Route", "admitted_connection", "json_response",
           "serve_exchange"]

log = logging.getLogger("dgasr.http")

MAX_HEAD_BYTES = 16 * 1024
METHOD_BYTES = 16  # enough for any HTTP method and the space after it


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # without the query
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    peer: str
    query: dict[str, str] = field(default_factory=dict)  # without the access token


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HttpStream:
    """A response whose body is written as it is made (server-sent events)."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = (("Cache-Control", "no-cache"),)


Handler = Callable[..., Awaitable[HttpResponse | HttpStream]]  # (request, **path parameters)


@dataclass(frozen=True)
class Route:
    """What a werkzeug ``Rule``'s endpoint is here: the handler and the limits on its body."""

    handler: Handler
    max_body: int = 0  # bytes: a bigger body is answered 413 before it is read
    read_timeout: float = 30.0


def json_response(status: int, body: dict, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, (json.dumps(body, ensure_ascii=False) + "\n").encode(), headers=headers)


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return json_response(status, error_body(message), headers)


@dataclass
class _Exchange:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER,
                                                                          max_incomplete_event_size=MAX_HEAD_BYTES))

    async def next_event(self, timeout: float):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(timeout):
                data = await self.reader.read(64 * 1024)
            self.conn.receive_data(data)  # b"" is the peer's EOF: h11 answers ConnectionClosed or raises

    async def send(self, *events) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def respond(self, response: HttpResponse | HttpStream) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already out
        headers = [("Content-Type", response.content_type), ("Connection", "close"), ("Server", "dgasr"),
                   *response.headers]
        if isinstance(response, HttpResponse):
            headers.append(("Content-Length", str(len(response.body))))
            await self.send(h11.Response(status_code=response.status, headers=headers),
                            h11.Data(data=response.body), h11.EndOfMessage())
            return
        await self.send(h11.Response(status_code=response.status, headers=headers))
        async for chunk in response.chunks:
            await self.send(h11.Data(data=chunk))
        await self.send(h11.EndOfMessage())


async def serve_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, routes: Map,
                         admission: Admission, peer: str, head_timeout: float, access: Access) -> None:
    """Read one HTTP request, answer it, close; the socket's admission slot is released at the end."""
    exchange = _Exchange(reader, writer)
    handshaking = True
    try:
        try:
            request = await exchange.next_event(head_timeout)
        except TimeoutError:
            return  # a client that never finished its request line gets no answer, like a websocket one
        if not isinstance(request, h11.Request):
            return
        admission.handshake_over()
        handshaking = False
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = request.method.decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        raw_query = dict(parse_qsl(query, keep_blank_values=True))
        if not access.allows_headers(path, headers, raw_query):
            return await exchange.respond(_error(401, "a valid token is required: Authorization: Bearer TOKEN "
                                                      "(or Token TOKEN), or ?token=TOKEN",
                                                 (("WWW-Authenticate", 'Bearer realm="dgasr"'),)))
        try:
            route, args = routes.bind("dgasr").match(path, method)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            return await exchange.respond(_error(405, f"{path} takes {allowed}, not {method}", (("Allow", allowed),)))
        except HTTPException:  # NotFound, or a redirect werkzeug would suggest for a trailing slash
            return await exchange.respond(_error(404, f"no endpoint {method} {path}"))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > route.max_body:
            return await exchange.respond(_error(413, f"request body of {int(declared)} bytes is over the "
                                                      f"limit of {route.max_body} bytes"))
        body = bytearray()
        try:
            while not isinstance(event := await exchange.next_event(route.read_timeout), h11.EndOfMessage):
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > route.max_body:
                        return await exchange.respond(_error(413, f"request body is over the limit of "
                                                                  f"{route.max_body} bytes"))
        except TimeoutError:
            return await exchange.respond(_error(408, f"no request body bytes for {route.read_timeout:g} s"))
        handler = asyncio.create_task(route.handler(HttpRequest(method, path, headers, bytes(body), peer,
                                                                strip_token(raw_query)[0]), **args))
        if not await _unless_gone(reader, handler):
            log.info("http client %s went away before its answer: %s %s abandoned", peer, method, path)
            return
        await exchange.respond(handler.result())
    except h11.RemoteProtocolError as exc:
        try:
            await exchange.respond(_error(exc.error_status_hint, f"bad HTTP request: {exc}"))
        except (ConnectionError, h11.ProtocolError):
            pass
    except ConnectionError:
        log.info("http client %s went away", peer)
    finally:
        if handshaking:
            admission.handshake_over()
        admission.leave(peer)
        writer.close()


async def _unless_gone(reader: asyncio.StreamReader, work: asyncio.Task) -> bool:
    """Wait for ``work``; if the client closes its socket first, cancel it and return False.

    A request is complete before its handler runs, so the next thing a client sends is
    nothing at all, until it hangs up: an end of file here means nobody waits for the
    answer, and a long transcription should not go on for no one.
    """
    watch = asyncio.create_task(reader.read(1))
    try:
        while True:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return True
            if watch.exception() is not None or watch.result() == b"":
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return False
            watch = asyncio.create_task(reader.read(1))  # a stray byte (a pipelined request): ignored
    finally:
        watch.cancel()


class FrontDoor(asyncio.Protocol):
    """The first protocol of every accepted socket; see the module docstring."""

    def __init__(self, websocket, admission: Admission, http: Callable[[asyncio.StreamReader,
                 asyncio.StreamWriter, str], Awaitable[None]], timeout: float) -> None:
        self._websocket = websocket  # websockets' ServerConnection, not yet connected
        self._admission = admission
        self._http = http
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._counted = False

    def connection_made(self, transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        if not self._admission.arrive(self._peer):
            transport.abort()  # before a byte is read: the client sees its connection reset, at once
            return
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        self._head += data
        method, space, _ = self._head.partition(b" ")
        if not space and len(self._head) < METHOD_BYTES:
            return
        if self._timer is not None:
            self._timer.cancel()
        transport, self._counted = self._transport, False  # the next protocol owns the slot now
        if method == b"GET":
            protocol = self._websocket
            protocol.peer_ip = self._peer
        else:
            reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
            protocol = asyncio.StreamReaderProtocol(reader, lambda r, w: self._http(r, w, self._peer))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(self._head)

    def eof_received(self) -> bool | None:
        return None  # closes the transport; connection_lost releases the slot

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            self._admission.handshake_over()
            self._admission.leave(self._peer)


def admitted_connection(admission: Admission, http, timeout: float):
    """websockets' connection factory: each socket starts at a :class:`FrontDoor` (counted by
    ``admission`` from accept), which hands GET requests to the websockets connection below
    (still counted until it is lost) and other methods to ``http``."""

    class AdmittedConnection(ServerConnection):
        peer_ip = "?"  # set by the FrontDoor, which has counted the socket already
        _arrived = True
        _pending = True

        def handshake_over(self) -> None:
            if self._pending:
                self._pending = False
                admission.handshake_over()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._arrived:
                self.handshake_over()
                admission.leave(self.peer_ip)
                self._arrived = False
            super().connection_lost(exc)

    def create(*args, **kwargs) -> FrontDoor:
        return FrontDoor(AdmittedConnection(*args, **kwargs), admission, http, timeout)

    return create
