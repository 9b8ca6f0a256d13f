"""The listening server: websocket routes, HTTP endpoints, admission and shutdown.

How this works
--------------
One process, one :class:`~server.engine.Engine` (the model on one device, one worker
thread), one :class:`~server.service.loop.EngineLoop` batching work from every session,
one :class:`~server.service.registry.SessionRegistry` (its update step is the loop's
``deliver``), and one transport connection per client. Websocket endpoints are routes
(``websockets.asyncio.router.route`` over a werkzeug ``Map``): ``/v1/listen`` is the
native v1 protocol (:class:`~server.wire.v1.V1Codec` over :class:`~server.transports.stream.StreamConnection`); a new protocol is a codec and one more rule.
The ``process_request`` hook answers ``/healthz``, ``/readyz`` and ``/v1/models`` and
validates ``/v1/listen`` query parameters before the upgrade (HTTP 400 with a JSON body
naming the bad parameter; HTTP 503 with ``Retry-After`` when full or not ready).

Admission (:mod:`server.service.admission`) is counted by the connection class itself
(accept and loss) and by the handler (session start and end), so no failed handshake
can hold a slot, and idle sockets past the pending-handshake bound are closed at accept.

Shutdown: stop taking sessions, end every session (open segments are finalized and
their finals and ``closed`` sent), wait for them, stop the engine loop.
"""

from __future__ import annotations

import asyncio
import http
import json
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
from werkzeug.routing import Map, Rule

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
from server.transports.files import FileEndpoint
from server.transports.http import FrontDoor, Route, serve_exchange
from server.transports.stream import Codec, StreamConnection
from server.wire import deepgram, openai_audio, realtime
from server.wire.v1 import LISTEN_PATH, ListenParams, ParamError, V1Codec

__all__ = ["DgasrServer"]

log = logging.getLogger("dgasr.server")

CLOSE_TIMEOUT_SECONDS = 2.0
SERVER_NAME = "dgasr"  # the Server header unless --server-details


def _json_response(connection: ServerConnection, status: int, body: dict, retry_after: int | None = None) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]  # respond() set text/plain; Headers is a multidict
    response.headers["Content-Type"] = "application/json"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


class DgasrServer:
    """The running server: engine, engine loop, connections. Start with :meth:`start`."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.scheduler = Scheduler()
        self.loop: EngineLoop | None = None
        self.registry = SessionRegistry()
        self.metrics = Metrics(device_memory=engine.device_memory_bytes)
        self.access = Access(config.auth_token)
        self.admission = Admission(Limits(config.max_sessions, config.max_connections_per_address,
                                          config.max_pending_handshakes))
        self.connections: dict[str, StreamConnection] = {}  # the transport's side of each registered session
        # The websocket routes' parameter parsers, run before the upgrade (a bad value: HTTP 400).
        self._params = {LISTEN_PATH: ListenParams.from_query, deepgram.PATH: deepgram.DeepgramParams.from_query,
                        realtime.PATH: lambda query: None}  # the Realtime API accepts any intent and model
        self.port = config.port
        # (feed CPU seconds, audio seconds) of recent sessions, for benchmarks
        self.feed_stats: deque[tuple[float, float]] = deque(maxlen=1024)
        self._stopping = False
        self._ws: Server | None = None
        self._loop_task: asyncio.Task | None = None
        self._closed = asyncio.Event()
        self._exchanges: set[asyncio.Task] = set()  # HTTP requests being answered (POST uploads)
        self.files = FileEndpoint(self)
        self._http_routes = {openai_audio.PATH: Route("POST", self.files.transcriptions,
                                                      max_body=config.max_upload_bytes + 64 * 1024,
                                                      read_timeout=config.idle_timeout)}

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
        self.port = next(iter(self._ws.sockets)).getsockname()[1]
        scheme = "wss" if self.config.tls_cert else "ws"
        log.info("listening on %s://%s:%d%s%s", scheme, self.config.host, self.port, LISTEN_PATH,
                 " (token required)" if self.access.required else "")

    async def _serve(self) -> Server:
        routes = Map([Rule(LISTEN_PATH, endpoint=self._listen), Rule(deepgram.PATH, endpoint=self._deepgram),
                      Rule(realtime.PATH, endpoint=self._realtime)])
        return await route(
            routes,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=_admitted_connection(self.admission, self._http_exchange, self.config.handshake_timeout),
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
        except TimeoutError:
            log.warning("%d session(s) did not finish within %g s", len(self.connections), timeout)
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        if self.loop is not None:
            self.loop.stop()
        if self._loop_task is not None:
            await asyncio.wait_for(self._loop_task, timeout=30)
        self._closed.set()

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

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _models_body(self) -> dict:
        if not self.engine.ready:
            return {"ready": False, "models": []}
        spec = self.engine.spec
        return {
            "ready": True,
            "models": [{
                "name": spec.name,
                "languages": list(spec.languages),
                "window_seconds": spec.window_seconds,
                "sample_rate": spec.sample_rate,
                "draft_steps": clamp_steps(self.config, spec, None, spec.draft_steps, self.config.draft_steps),
                "final_steps": clamp_steps(self.config, spec, None, spec.final_steps, self.config.final_steps),
                "max_steps": max_steps(self.config, spec),
                **({"device": str(self.engine.model.device)} if self.config.server_details else {}),
            }],
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if not self.access.allows_headers(path, request.headers, _raw_query(request.path)):
            return self._unauthorized(connection)
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.engine.ready and not self._stopping:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.engine.state.value}\n")
        if path == "/v1/models":
            return _json_response(connection, 200, self._models_body())
        if path == "/metrics":
            body = self.metrics.render()
            return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]),
                            body)
        if path in self._http_routes:  # a POST endpoint asked with GET
            response = _json_response(connection, 405, openai_audio.error_body(f"{path} takes POST, not GET"))
            response.headers["Allow"] = "POST"
            return response
        parse = self._params.get(path)
        if parse is None:
            return _json_response(connection, 404, {"error": "not_found", "message": f"no endpoint {path}"})
        origin = request.headers.get("Origin")
        # Browsers send Origin, other clients do not. Checked here rather than by websockets'
        # own origins= option, which answers the same 403 but logs each refusal as an error
        # with a traceback: a foreign page could fill the logs.
        if origin is not None and self.config.allowed_origins and origin not in self.config.allowed_origins:
            return _json_response(connection, 403, {"error": "forbidden", "message": f"origin {origin} is not allowed"})
        try:
            parse(_query(request.path))  # 400 before the upgrade
        except (ParamError, deepgram.DeepgramParamError) as exc:
            return _json_response(connection, 400, exc.to_dict())
        if self._stopping or not self.engine.ready:
            reason = "server is shutting down" if self._stopping else "model is still loading"
            return _json_response(connection, 503, {"error": "unavailable", "message": reason}, retry_after=5)
        if self.admission.full:
            return self._full(connection)
        return None  # the router hands it to the route's handler

    def _unauthorized(self, connection: ServerConnection) -> Response:
        response = _json_response(connection, 401, {"error": "unauthorized", "message": "a valid token is required: "
                                                    "Authorization: Bearer TOKEN (or Token TOKEN), or ?token=TOKEN"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="dgasr"'
        return response

    def _full(self, connection: ServerConnection) -> Response:
        message = f"server is full ({self.config.max_sessions} sessions)"
        return _json_response(connection, 503, {"error": "overloaded", "message": message}, retry_after=2)

    # ---- sessions ----------------------------------------------------------

    def session_config(self, draft_steps: int | None = None, final_steps: int | None = None,
                        silence_ms: int | None = None) -> SessionConfig:
        return make_session_config(self.config, self.engine.spec, draft_steps, final_steps, silence_ms)

    async def _listen(self, ws: ServerConnection) -> None:
        """The ``/v1/listen`` route: one native v1 session."""
        params = ListenParams.from_query(_query(ws.request.path))
        config = self.session_config(params.draft_steps, params.final_steps)
        await self._stream(ws, params.stream(), config, V1Codec(), "v1")

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
                      protocol: str) -> None:
        ws.handshake_over()
        # Sessions are counted here, where one really starts, and nowhere else. Handshakes
        # that raced past the 503 check are refused with 1013 "try again later".
        if self._stopping or not self.admission.start_session():
            await ws.close(1013, "server is full" if not self._stopping else "server is shutting down")
            return
        try:
            await self._run_session(ws, Session(uuid.uuid4().hex[:12], stream, config), codec, protocol)
        finally:
            self.admission.end_session()

    async def _run_session(self, ws: ServerConnection, session: Session, codec: Codec, protocol: str) -> None:
        assert self.loop is not None
        metrics = self.metrics.protocol(protocol)
        conn = StreamConnection(ws, session, self.loop, codec, idle_timeout=self.config.idle_timeout, metrics=metrics,
                                log_finals=self.config.log_transcripts)
        metrics.opened()
        self.connections[session.id] = conn
        self.registry.add(conn.sink)
        stream = session.stream
        log.info("session %s open: %s peer=%s rate=%d encoding=%s language=%s", session.id,
                 ws.request.path.partition("?")[0], ws.peer_ip, stream.sample_rate, stream.encoding.value,
                 stream.language or "auto")
        try:
            await conn.run()
        finally:
            metrics.closed(session.audio_seconds)
            del self.connections[session.id]
            self.registry.remove(session.id)
            self.feed_stats.append((conn.feed_seconds, session.audio_seconds))
            log.info(
                "session %s close: state=%s reason=%s audio=%.1fs segments=%d partials=%d finals=%d "
                "dropped_partials=%d duration=%.1fs", session.id, session.state.value, session.close_reason,
                session.audio_seconds, session.segments, conn.sink.partials, conn.sink.finals,
                conn.outbox.dropped_partials, time.monotonic() - conn.opened,
            )


def _raw_query(path: str) -> dict[str, str]:
    """A request path's query parameters (the last value of a repeated one wins)."""
    return dict(parse_qsl(path.partition("?")[2], keep_blank_values=True))


def _query(path: str) -> dict[str, str]:
    """The query a protocol sees: without the access token (never parsed, logged or echoed)."""
    return strip_token(_raw_query(path))[0]


def _admitted_connection(admission: Admission, http, timeout: float):
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
