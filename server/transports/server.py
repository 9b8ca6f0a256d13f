"""The listening server: routes, admission, rooms and shutdown, all on one port.

How this works
--------------
One process, one :class:`~server.engine.Engine` (the model on one device, one worker
thread), one :class:`~server.service.loop.EngineLoop` batching work from every session,
one :class:`~server.service.registry.SessionRegistry` (its update step is the loop's
``deliver``), one :class:`~server.service.rooms.RoomHub`, and one transport connection
per client. Three werkzeug ``Map`` s route requests:

- websocket routes (``websockets.asyncio.router.route``): ``/v1/listen`` (native v1,
  :class:`~server.wire.v1.V1Codec` over :class:`~server.transports.stream.StreamConnection`),
  ``/deepgram/v1/listen``, ``/v1/realtime``, and room subscribers ``/v1/rooms/NAME``;
  a new protocol is a codec and one more rule;
- GET endpoints, answered by the ``process_request`` hook before any upgrade: health,
  readiness, metrics, models, the caption page, the room list and transcripts;
- other methods (``POST /v1/audio/transcriptions``, ``DELETE .../transcript``), which the
  :class:`~server.transports.http.FrontDoor` hands to h11.

Before an upgrade ``process_request`` checks, in order: the token (401), the route (404),
the ``Origin`` (403), the protocol's query parameters (400 naming the bad one),
readiness and shutdown (503 with ``Retry-After``), capacity (503).

Shutdown: stop taking sessions, end every session (open segments are finalized and
their finals and ``closed`` sent) and every file transcription, flush the rooms, close,
stop the engine loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
import time
import uuid
from collections import deque
from urllib.parse import parse_qsl

from websockets.asyncio.router import route
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import SERVER as WEBSOCKETS_SERVER
from websockets.http11 import Request, Response
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule

from server.core.rooms import RoomError, check_name
from server.core.scheduler import Scheduler
from server.core.session import Session, SessionConfig, StreamFormat
from server.engine import Engine
from server.service.access import Access, strip_token
from server.service.admission import Admission, Limits
from server.service.config import ServerConfig, clamp_steps, max_steps
from server.service.config import session_config as make_session_config
from server.service.loop import EngineLoop
from server.service.metrics import CONTENT_TYPE, Metrics
from server.service.registry import SessionRegistry
from server.service.rooms import RoomHub
from server.service.store import open_store
from server.transports.files import FileEndpoint
from server.transports.http import (
    HttpRequest,
    HttpResponse,
    Route,
    admitted_connection,
    json_response,
    serve_exchange,
)
from server.transports.page import Page
from server.transports.rooms import RoomEndpoints
from server.transports.stream import Codec, StreamConnection
from server.wire import deepgram, openai_audio, realtime
from server.wire.rooms import encode_room_event
from server.wire.v1 import LISTEN_PATH, ListenParams, ParamError, V1Codec

__all__ = ["DgasrServer"]

log = logging.getLogger("dgasr.server")

CLOSE_TIMEOUT_SECONDS = 2.0
SERVER_NAME = "dgasr"  # the Server header unless --server-details
ROOM_PATH = "/v1/rooms/<name>"


def _response(answer: HttpResponse, retry_after: int | None = None) -> Response:
    headers = Headers([("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body))),
                       *answer.headers])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(answer.status, http.HTTPStatus(answer.status).phrase, headers, answer.body)


def _json(status: int, body: dict, retry_after: int | None = None) -> Response:
    return _response(json_response(status, body), retry_after)


def _text(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain; charset=utf-8")


class DgasrServer:
    """The running server: engine, engine loop, connections. Start with :meth:`start`."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.scheduler = Scheduler.for_device(cpu=engine.cpu_threads is not None)
        self.loop: EngineLoop | None = None
        self.registry = SessionRegistry()
        self.metrics = Metrics(device_memory=engine.device_memory_bytes)
        self.access = Access(config.auth_token)
        self.admission = Admission(Limits(config.max_sessions, config.max_connections_per_address,
                                          config.max_pending_handshakes))
        self.hub = RoomHub(open_store(config.db), encode_room_event, config.room_idle_timeout)
        self.connections: dict[str, StreamConnection] = {}  # the transport's side of each registered session
        self.port = config.port
        # (feed CPU seconds, audio seconds) of recent sessions, for benchmarks
        self.feed_stats: deque[tuple[float, float]] = deque(maxlen=1024)
        self._stopping = False
        self._ws: Server | None = None
        self._loop_task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._closed = asyncio.Event()
        self._exchanges: set[asyncio.Task] = set()  # HTTP requests being answered (POST uploads)
        self.files = FileEndpoint(self)
        self.rooms = RoomEndpoints(self.hub, config.idle_timeout)
        self.page = Page()
        self._ws_routes = Map([Rule(LISTEN_PATH, endpoint=self._listen), Rule(deepgram.PATH, endpoint=self._deepgram),
                               Rule(realtime.PATH, endpoint=self._realtime),
                               Rule(ROOM_PATH, endpoint=self.rooms.subscribe)])
        # The websocket routes' parameter parsers, run before the upgrade (a bad value: HTTP 400).
        self._params = {self._listen: ListenParams.from_query, self._deepgram: deepgram.DeepgramParams.from_query,
                        self._realtime: lambda query: None,  # the Realtime API accepts any intent and model
                        self.rooms.subscribe: lambda query: None}
        self._get_routes = Map([Rule("/healthz", endpoint=self._healthz), Rule("/readyz", endpoint=self._readyz),
                                Rule("/metrics", endpoint=self._metrics), Rule("/v1/models", endpoint=self._models),
                                Rule("/", endpoint=self.page.index), Rule("/static/<name>", endpoint=self.page.static),
                                Rule("/v1/rooms", endpoint=self.rooms.listing),
                                Rule(ROOM_PATH + "/transcript", endpoint=self.rooms.transcript, methods=["GET"])])
        self._http_routes = Map([
            Rule(openai_audio.PATH, methods=["POST"], endpoint=Route(
                self.files.transcriptions, max_body=config.max_upload_bytes + 64 * 1024,
                read_timeout=config.idle_timeout)),
            Rule(ROOM_PATH + "/transcript", methods=["DELETE"], endpoint=Route(self.rooms.delete))])

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self.loop = EngineLoop(self.engine, self.scheduler, self.config.max_batch, self.registry.deliver,
                               on_batch=self.metrics.batch)
        self._loop_task = asyncio.create_task(self.loop.run(), name="engine-loop")
        try:
            self._ws = await self._serve()
        except BaseException:
            self.loop.stop()
            await self._loop_task
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name="room-sweeper")
        self.port = next(iter(self._ws.sockets)).getsockname()[1]
        scheme = "wss" if self.config.tls_cert else "ws"
        log.info("listening on %s://%s:%d%s%s", scheme, self.config.host, self.port, LISTEN_PATH,
                 " (token required)" if self.access.required else "")

    async def _serve(self) -> Server:
        return await route(
            self._ws_routes,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=admitted_connection(self.admission, self._http_exchange, self.config.handshake_timeout),
            open_timeout=self.config.handshake_timeout,
            # The closing handshake waits this long for the client's close frame; a client
            # that does not read would otherwise hold every close (and shutdown) 10 s.
            close_timeout=CLOSE_TIMEOUT_SECONDS,
            max_size=self.config.max_frame_bytes,
            max_queue=32,
            server_header=WEBSOCKETS_SERVER if self.config.server_details else SERVER_NAME,
            ssl=self._tls(),
        )

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for name in self.hub.sweep():
                log.info("room %s: idle for %g s, no longer live", name, self.hub.idle_timeout)

    async def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking sessions, flush every session's finals, close, stop the engine loop.

        The listening socket stays open while sessions drain, so a client that connects
        meanwhile gets the documented HTTP 503 with Retry-After (``_process_request``)
        instead of a refused connection, and a load balancer's health check sees
        ``/readyz`` answer 503.
        """
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        log.info("shutting down: finalizing %d session(s)", len(self.connections))
        for conn in list(self.connections.values()):
            conn.shutdown()
        try:  # live sessions flush their finals; file transcriptions finish theirs
            await asyncio.wait_for(self.registry.wait_empty(), timeout)
            if self._exchanges:
                await asyncio.wait_for(asyncio.gather(*self._exchanges, return_exceptions=True), CLOSE_TIMEOUT_SECONDS)
            for name in self.hub.names():  # every final is stored and offered to the subscribers
                await asyncio.wait_for(self.hub.flush(name), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("%d session(s) did not finish within %g s", len(self.connections), timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        await self.hub.close()
        if self.loop is not None:
            self.loop.stop()
        if self._loop_task is not None:
            await asyncio.wait_for(self._loop_task, timeout=30)
        self._closed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ---- HTTP side ---------------------------------------------------------

    async def _http_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        """A socket whose request is not a GET (:class:`FrontDoor`): one HTTP request and answer."""
        task = asyncio.current_task()
        self._exchanges.add(task)
        try:
            await serve_exchange(reader, writer, self._http_routes, self.admission, peer,
                                 self.config.handshake_timeout, self.access)
        finally:
            self._exchanges.discard(task)

    async def _healthz(self, request: HttpRequest) -> HttpResponse:
        return _text(200, "ok\n")

    async def _readyz(self, request: HttpRequest) -> HttpResponse:
        if self.engine.ready and not self._stopping:
            return _text(200, "ready\n")
        return _text(503, f"{'draining' if self._stopping else self.engine.state.value}\n")

    async def _metrics(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self.metrics.render(), CONTENT_TYPE)

    async def _models(self, request: HttpRequest) -> HttpResponse:
        if not self.engine.ready:
            return json_response(200, {"ready": False, "models": []})
        spec = self.engine.spec
        return json_response(200, {"ready": True, "models": [{
            "name": spec.name, "languages": list(spec.languages), "window_seconds": spec.window_seconds,
            "sample_rate": spec.sample_rate,
            "draft_steps": clamp_steps(self.config, spec, None, spec.draft_steps, self.config.draft_steps),
            "final_steps": clamp_steps(self.config, spec, None, spec.final_steps, self.config.final_steps),
            "max_steps": max_steps(self.config, spec),
            **({"device": str(self.engine.model.device)} if self.config.server_details else {}),
        }]})

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        raw_query = dict(parse_qsl(request.path.partition("?")[2], keep_blank_values=True))
        if not self.access.allows_headers(path, request.headers, raw_query):
            body = json_response(401, {"error": "unauthorized", "message": "a valid token is required: Authorization: "
                                                                       "Bearer TOKEN (or Token TOKEN), or ?token=TOKEN"})
            return _response(HttpResponse(401, body.body, headers=(("WWW-Authenticate", 'Bearer realm="dgasr"'),)))
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not upgrade:
            with contextlib.suppress(HTTPException):
                endpoint, args = self._get_routes.bind("dgasr").match(path, "GET")
                http_request = HttpRequest("GET", path, {k.lower(): v for k, v in request.headers.raw_items()}, b"",
                                           getattr(connection, "peer_ip", "?"), strip_token(raw_query)[0])
                return _response(await endpoint(http_request, **args))
        try:
            # the router marks its rules websocket-only, hence the ws scheme
            endpoint, args = self._ws_routes.bind("dgasr", url_scheme="ws").match(path)
            if "name" in args:
                check_name(args["name"])  # a room that cannot exist: 404
        except (HTTPException, RoomError):
            try:
                self._http_routes.bind("dgasr").match(path, "GET")
            except MethodNotAllowed as exc:  # a POST endpoint asked with GET
                allowed = ", ".join(sorted(exc.valid_methods or ()))
                answer = json_response(405, openai_audio.error_body(f"{path} takes {allowed}, not GET"))
                return _response(HttpResponse(405, answer.body, headers=(("Allow", allowed),)))
            except HTTPException:
                pass
            return _json(404, {"error": "not_found", "message": f"no endpoint {path}"})
        origin = request.headers.get("Origin")
        # Browsers send Origin, other clients do not. Checked here rather than by websockets'
        # own origins= option, which answers the same 403 but logs each refusal as an error
        # with a traceback: a foreign page could fill the logs.
        if origin is not None and self.config.allowed_origins and origin not in self.config.allowed_origins:
            return _json(403, {"error": "forbidden", "message": f"origin {origin} is not allowed"})
        try:
            self._params[endpoint](strip_token(raw_query)[0])  # 400 before the upgrade
        except (ParamError, deepgram.DeepgramParamError) as exc:
            return _json(400, exc.to_dict())
        if self._stopping or not self.engine.ready:
            reason = "server is shutting down" if self._stopping else "model is still loading"
            return _json(503, {"error": "unavailable", "message": reason}, retry_after=5)
        if endpoint == self.rooms.subscribe:  # bound methods: equal, never identical
            if self.hub.subscribers >= self.config.max_subscribers:
                message = f"server is full ({self.config.max_subscribers} room subscribers)"
                return _json(503, {"error": "overloaded", "message": message}, retry_after=5)
        elif self.admission.full:
            message = f"server is full ({self.config.max_sessions} sessions)"
            return _json(503, {"error": "overloaded", "message": message}, retry_after=2)
        if not upgrade:  # everything checked, but this is no websocket handshake (a page's pre-flight)
            return _json(426, {"error": "upgrade_required", "message": f"{path} is a websocket endpoint"})
        return None  # the router hands it to the route's handler

    # ---- sessions ----------------------------------------------------------

    def session_config(self, draft_steps: int | None = None, final_steps: int | None = None,
                       silence_ms: int | None = None) -> SessionConfig:
        return make_session_config(self.config, self.engine.spec, draft_steps, final_steps, silence_ms)

    async def _listen(self, ws: ServerConnection) -> None:
        """The ``/v1/listen`` route: one native v1 session (in a room when it names one)."""
        params = ListenParams.from_query(_query(ws.request.path))
        config = self.session_config(params.draft_steps, params.final_steps)
        await self._stream(ws, params.stream(), config, V1Codec(), "v1", params.room, params.speaker)

    async def _deepgram(self, ws: ServerConnection) -> None:
        """The ``/deepgram/v1/listen`` route: one Deepgram live session."""
        params = deepgram.DeepgramParams.from_query(_query(ws.request.path))
        await self._stream(ws, params.stream(), self.session_config(silence_ms=params.silence_ms),
                           deepgram.DeepgramCodec(params), "deepgram")

    async def _realtime(self, ws: ServerConnection) -> None:
        """The ``/v1/realtime`` route: one OpenAI Realtime transcription session (GA or legacy beta)."""
        params = realtime.RealtimeParams.from_request(_query(ws.request.path),
                                                      ws.request.headers.get("OpenAI-Beta"))
        await self._stream(ws, params.stream(), self.session_config(silence_ms=realtime.DEFAULT_SILENCE_MS),
                           realtime.RealtimeCodec(params), "realtime")

    async def _stream(self, ws: ServerConnection, stream: StreamFormat, config: SessionConfig, codec: Codec,
                      protocol: str, room: str | None = None, speaker: str | None = None) -> None:
        ws.handshake_over()
        # Sessions are counted here, where one really starts, and nowhere else. Handshakes
        # that raced past the 503 check are refused with 1013 "try again later".
        if self._stopping or not self.admission.start_session():
            await ws.close(1013, "server is full" if not self._stopping else "server is shutting down")
            return
        try:
            session = Session(uuid.uuid4().hex[:12], stream, config)
            await self._run_session(ws, session, codec, protocol, room, speaker)
        finally:
            self.admission.end_session()

    async def _run_session(self, ws: ServerConnection, session: Session, codec: Codec, protocol: str,
                           room: str | None, speaker: str | None) -> None:
        assert self.loop is not None
        metrics = self.metrics.protocol(protocol)
        conn = StreamConnection(ws, session, self.loop, codec, idle_timeout=self.config.idle_timeout, metrics=metrics,
                                log_finals=self.config.log_transcripts)
        if room is not None:  # the room sees every event the publisher is sent, on the room clock
            conn.sink.add_observer(await self.hub.publisher(room, speaker or f"speaker-{session.id[:4]}", session.id))
        metrics.opened()
        self.connections[session.id] = conn
        self.registry.add(conn.sink)
        stream = session.stream
        log.info("session %s open: %s peer=%s rate=%d encoding=%s language=%s%s", session.id,
                 ws.request.path.partition("?")[0], ws.peer_ip, stream.sample_rate, stream.encoding.value,
                 stream.language or "auto", f" room={room}" if room else "")
        try:
            await conn.run()
        finally:
            metrics.closed(session.audio_seconds)
            if room is not None:
                self.hub.leave(room, session.id)
            del self.connections[session.id]
            self.registry.remove(session.id)
            self.feed_stats.append((conn.feed_seconds, session.audio_seconds))
            log.info(
                "session %s close: protocol=%s state=%s reason=%s audio=%.1fs segments=%d partials=%d finals=%d "
                "dropped_partials=%d duration=%.1fs", session.id, protocol, session.state.value, session.close_reason,
                session.audio_seconds, session.segments, conn.sink.partials, conn.sink.finals,
                conn.outbox.dropped_partials, time.monotonic() - conn.opened,
            )


def _query(path: str) -> dict[str, str]:
    """The query a protocol sees: without the access token (never parsed, logged or echoed)."""
    return strip_token(dict(parse_qsl(path.partition("?")[2], keep_blank_values=True)))[0]

