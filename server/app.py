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

import argparse
import asyncio
import dataclasses
import http
import json
import logging
import os
import signal
import sys
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
from .protocol import LISTEN_PATH, ListenParams, ParamError
from .scheduler import Job, Scheduler
from .session import Session, SessionConfig
from .vad import VadConfig

__all__ = ["ServerConfig", "DgasrServer", "main"]

log = logging.getLogger("dgasr.server")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    model: str = "auto"
    device: str = "auto"
    draft_steps: int | None = None  # None: the model's default
    final_steps: int | None = None
    max_steps: int | None = None
    partial_interval_ms: int = 450
    vad_aggressiveness: int = 2
    silence_ms: int = 600
    max_sessions: int = 64
    max_batch: int = 16
    idle_timeout: float = 30.0
    max_frame_bytes: int = 1 << 20
    warm_start: bool = False
    log_level: str = "INFO"
    whisper: str | None = None  # per-part overrides: HF repo id or directory
    backbone: str | None = None
    adapter: str | None = None


def _json_response(connection: ServerConnection, status: int, body: dict, retry_after: int | None = None) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
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
        self._handshakes = 0
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
        self._ws = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_frame_bytes,
            max_queue=32,
        )
        self.port = next(iter(self._ws.sockets)).getsockname()[1]
        log.info("listening on ws://%s:%d%s", self.config.host, self.port, LISTEN_PATH)

    async def shutdown(self, timeout: float = 60.0) -> None:
        """Stop accepting, flush every session's finals, close, stop the engine loop."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        log.info("shutting down: finalizing %d session(s)", len(self.connections))
        if self._ws is not None:
            self._ws.close(close_connections=False)
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
            params = ListenParams.from_query(dict(parse_qsl(query, keep_blank_values=True)))
        except ParamError as exc:
            return _json_response(connection, 400, exc.to_dict())
        if self._stopping or not self.engine.ready:
            reason = "server is shutting down" if self._stopping else "model is still loading"
            return _json_response(connection, 503, {"error": "unavailable", "message": reason}, retry_after=5)
        if len(self.connections) + self._handshakes >= self.config.max_sessions:
            message = f"server is full ({self.config.max_sessions} sessions)"
            return _json_response(connection, 503, {"error": "overloaded", "message": message}, retry_after=2)
        self._handshakes += 1
        connection.dgasr_params = params  # picked up by _handle
        return None

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
        self._handshakes -= 1
        params: ListenParams = ws.dgasr_params
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


# ---- command line ----------------------------------------------------------

_OPTIONS: list[tuple[str, type, str]] = [
    ("host", str, "interface to listen on"),
    ("port", int, "TCP port (0 picks a free one)"),
    ("model", str, "auto | diffusion-gemma-asr-small | tiny-random | model directory"),
    ("device", str, "auto | cpu | cuda | cuda:N"),
    ("draft_steps", int, "denoising steps for partials (default: the model's)"),
    ("final_steps", int, "denoising steps for finals (default: the model's)"),
    ("max_steps", int, "upper limit for steps a client may ask for"),
    ("partial_interval_ms", int, "new speech between two partials"),
    ("vad_aggressiveness", int, "webrtcvad aggressiveness 0-3"),
    ("silence_ms", int, "silence that ends a segment"),
    ("max_sessions", int, "concurrent sessions; more get HTTP 503"),
    ("max_batch", int, "requests per engine batch (1 disables batching)"),
    ("idle_timeout", float, "seconds without audio or keepalive before a session is closed"),
    ("max_frame_bytes", int, "largest websocket frame accepted"),
    ("log_level", str, "DEBUG, INFO, WARNING, ERROR"),
    ("whisper", str, "whisper encoder: HF repo id or directory (overrides the model's)"),
    ("backbone", str, "DiffusionGemma backbone: HF repo id or directory (overrides the model's)"),
    ("adapter", str, "projector + LoRA adapter: HF repo id or directory (overrides the model's)"),
]


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Options from the command line, each defaulting to ``DGASR_<OPTION>`` from the environment."""
    environ = os.environ if environ is None else environ
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="dgasr-server",
        description="Streaming speech-to-text over websockets with a diffusion ASR model.",
        epilog="Every option can also be set with an environment variable DGASR_<OPTION>, "
        "e.g. DGASR_PORT=9000. Protocol: docs/protocol.md.",
    )
    for name, kind, help_text in _OPTIONS:
        env = f"DGASR_{name.upper()}"
        default = getattr(defaults, name)
        if env in environ:
            try:
                default = kind(environ[env])
            except ValueError:
                parser.error(f"{env}={environ[env]!r} is not a valid {kind.__name__}")
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                            help=f"{help_text} (env {env}; default: {default})")
    warm = environ.get("DGASR_WARM_START", "").lower() in ("1", "true", "yes", "on")
    parser.add_argument("--warm-start", action="store_true", default=warm,
                        help="start each final (and draft) from the segment's last draft canvas (env DGASR_WARM_START)")
    args = parser.parse_args(argv)
    if not 0 <= args.vad_aggressiveness <= 3:
        parser.error("--vad-aggressiveness must be 0-3")
    if args.max_batch < 1 or args.max_sessions < 1:
        parser.error("--max-batch and --max-sessions must be at least 1")
    return ServerConfig(**vars(args))


def cpu_threads() -> int:
    """Torch threads for a CPU engine: all cores but one, which the event loop keeps."""
    return max(1, (os.cpu_count() or 2) - 1)


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
    engine.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = DgasrServer(config, engine)
    await server.start()  # /healthz answers while the model loads; /readyz once it is warm
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
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve_until_signalled(config))


if __name__ == "__main__":
    sys.exit(main())
