"""`dgasr-server`: the websocket server, its HTTP endpoints, its options and its lifecycle.

How this works
--------------
One process, one :class:`~server.engine.Engine` (the model on one device, one worker
thread), one :class:`~server.core.EngineLoop` batching work from every session, and one
:class:`~server.connection.Connection` per client. The websockets server's
``process_request`` hook answers ``/healthz``, ``/readyz`` and ``/v1/models`` and
validates ``/v1/listen`` query parameters before the upgrade (HTTP 400 with a JSON body
naming the bad parameter; HTTP 503 with ``Retry-After`` when full or not ready).

SIGINT/SIGTERM: stop accepting, end every session (their open segments are finalized
and their finals and ``closed`` sent), wait for them, stop the engine, exit 0.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import os
import signal
import time
import uuid
from collections import deque
from urllib.parse import parse_qsl

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .connection import Connection
from .core import EngineLoop
from .engine import Engine, EngineState, ModelLoadError, TranscribeResult, load_model
from .engine.loader import resolve_device, resolve_model_name
from .options import ServerConfig
from .protocol import LISTEN_PATH, ListenParams, ParamError
from .scheduler import Job, Scheduler
from .session import Session, SessionConfig
from .vad import VadConfig

__all__ = ["ServerConfig", "DgasrServer", "cpu_threads", "serve_until_signalled", "main"]

log = logging.getLogger("dgasr.server")


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
        self.connections: dict[str, Connection] = {}
        self.port = config.port
        # (feed CPU seconds, audio seconds) of recent sessions, for benchmarks
        self.feed_stats: deque[tuple[float, float]] = deque(maxlen=1024)
        self._stopping = False
        self._ws: Server | None = None
        self._loop_task: asyncio.Task | None = None
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever the last connection ends

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self.loop = EngineLoop(self.engine, self.scheduler, self.config.max_batch, self._deliver)
        self._loop_task = asyncio.create_task(self.loop.run(), name="engine-loop")
        try:
            self._ws = await self._serve()
        except BaseException:
            self.loop.stop()
            await self._loop_task
            raise
        self.port = next(iter(self._ws.sockets)).getsockname()[1]
        log.info("listening on ws://%s:%d%s", self.config.host, self.port, LISTEN_PATH)

    async def _serve(self) -> Server:
        return await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_frame_bytes,
            max_queue=32,
        )

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
        if self.connections:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
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
                "draft_steps": self._steps(None, spec.draft_steps, self.config.draft_steps),
                "final_steps": self._steps(None, spec.final_steps, self.config.final_steps),
                "max_steps": self._max_steps(),
                "device": str(self.engine.model.device),
            }],
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.engine.ready and not self._stopping:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.engine.state.value}\n")
        if path == "/v1/models":
            return _json_response(connection, 200, self._models_body())
        if path != LISTEN_PATH:
            return _json_response(connection, 404, {"error": "not_found", "message": f"no endpoint {path}"})
        try:
            ListenParams.from_query(dict(parse_qsl(query, keep_blank_values=True)))  # 400 before the upgrade
        except ParamError as exc:
            return _json_response(connection, 400, exc.to_dict())
        if self._stopping or not self.engine.ready:
            reason = "server is shutting down" if self._stopping else "model is still loading"
            return _json_response(connection, 503, {"error": "unavailable", "message": reason}, retry_after=5)
        if len(self.connections) >= self.config.max_sessions:
            return self._full(connection)
        return None

    def _full(self, connection: ServerConnection) -> Response:
        message = f"server is full ({self.config.max_sessions} sessions)"
        return _json_response(connection, 503, {"error": "overloaded", "message": message}, retry_after=2)

    # ---- sessions ----------------------------------------------------------

    def _max_steps(self) -> int:
        return min(self.config.max_steps or self.engine.spec.max_steps, self.engine.spec.max_steps)

    def _steps(self, asked: int | None, model_default: int, server_default: int | None) -> int:
        return max(1, min(asked or server_default or model_default, self._max_steps()))

    def _session_config(self, params: ListenParams) -> SessionConfig:
        spec = self.engine.spec
        vad = VadConfig(
            aggressiveness=self.config.vad_aggressiveness,
            silence_ms=self.config.silence_ms,
            max_segment_s=max(2.0, spec.window_seconds - 0.5),
            split_search_s=min(3.0, spec.window_seconds / 4),
        )
        return SessionConfig(
            model=spec.name,
            draft_steps=self._steps(params.draft_steps, spec.draft_steps, self.config.draft_steps),
            final_steps=self._steps(params.final_steps, spec.final_steps, self.config.final_steps),
            vad=vad,
            partial_interval_ms=self.config.partial_interval_ms,
            warm_start=self.config.warm_start,
        )

    async def _handle(self, ws: ServerConnection) -> None:
        # Sessions are counted here, where one really starts, and nowhere else: a handshake
        # that fails after process_request (a plain GET, a bad key, a client that hangs up)
        # never reaches this handler, so it can hold no slot. Handshakes that raced past
        # the 503 check are refused here with 1013 "try again later".
        if len(self.connections) >= self.config.max_sessions or self._stopping:
            await ws.close(1013, "server is full" if not self._stopping else "server is shutting down")
            return
        params = ListenParams.from_query(dict(parse_qsl(ws.request.path.partition("?")[2], keep_blank_values=True)))
        session = Session(uuid.uuid4().hex[:12], params, self._session_config(params))
        assert self.loop is not None
        conn = Connection(ws, session, self.loop, idle_timeout=self.config.idle_timeout)
        self.connections[session.id] = conn
        peer = ws.remote_address[0] if ws.remote_address else "?"
        log.info("session %s open: peer=%s rate=%d encoding=%s language=%s", session.id, peer,
                 params.sample_rate, params.encoding.value, params.language or "auto")
        try:
            await conn.run()
        finally:
            del self.connections[session.id]
            if not self.connections:
                self._drained.set()
            self.feed_stats.append((conn.feed_seconds, session.audio_seconds))
            log.info(
                "session %s close: state=%s reason=%s audio=%.1fs segments=%d partials=%d finals=%d "
                "dropped_partials=%d duration=%.1fs", session.id, session.state.value, session.close_reason,
                session.audio_seconds, session.segments, conn.partials, conn.finals,
                conn.outbox.dropped_partials, time.monotonic() - conn.opened,
            )

    def _deliver(self, job: Job, result: TranscribeResult | None, error: BaseException | None) -> None:
        conn = self.connections.get(job.session)
        if conn is None:
            return  # the client left; its results are simply dropped
        out = conn.session.job_done(job, result) if error is None else conn.session.job_failed(job, error)
        conn.route(out)


def cpu_threads() -> int:
    """Torch threads for a CPU engine: all cores but one, which the event loop keeps."""
    return max(1, (os.cpu_count() or 2) - 1)


def _os_reason(exc: OSError) -> str:
    """The OS's words for a bind failure (asyncio wraps them in a longer sentence)."""
    if exc.errno:
        text = os.strerror(exc.errno)
        return text[0].lower() + text[1:]
    return str(exc.strerror or exc)


async def serve_until_signalled(config: ServerConfig) -> int:
    try:
        name = resolve_model_name(config.model)
        device = resolve_device(config.device)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    parts = {"whisper": config.whisper, "backbone": config.backbone, "adapter": config.adapter}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loaded = asyncio.Event()
    engine = Engine(
        lambda: load_model(name, device, parts=parts),
        on_ready=lambda: loop.call_soon_threadsafe(loaded.set),
        threads=cpu_threads() if device.type == "cpu" else None,
    )
    server = DgasrServer(config, engine)
    try:  # bind first: a port in use must not cost a model load
        await server.start()  # /healthz answers while the model loads; /readyz once it is warm
    except OSError as exc:  # port in use, address not on this machine, no permission
        log.error("cannot listen on %s:%d: %s", config.host, config.port, _os_reason(exc))
        return 2
    engine.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, asyncio.create_task(loaded.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if engine.state is EngineState.FAILED:
        try:
            engine.wait_ready(0)
        except Exception as exc:  # ModelLoadError carries a message meant for the user
            log.error("model could not be loaded: %s", exc)
        await server.shutdown()
        return 1
    await stopped
    await server.shutdown()
    engine.close()
    log.info("stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``dgasr-server``; the options are parsed first, in :mod:`server.options`, without torch."""
    from .server_cli import main as cli_main

    return cli_main(argv)
