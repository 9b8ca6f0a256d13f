"""The server's settings, as one frozen value (filled by :mod:`server.cli.options` or by tests),
and :func:`session_config`: how those settings and a model become one session's settings.

``session_config`` is shared by every way audio enters (the websocket protocols, the file
endpoint and ``dgasr-transcribe``), so the same audio is cut into the same segments with
the same steps and seeds, and gives the same text, whichever way it came in.
"""

from __future__ import annotations

import dataclasses

from server.core.session import SessionConfig
from server.core.vad_config import VadConfig

__all__ = ["ServerConfig", "clamp_steps", "max_steps", "session_config"]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    model: str = "auto"
    device: str = "auto"
    draft_steps: int | None = None  # None: the model's default
    final_steps: int | None = None
    max_steps: int | None = None
    # the session's own defaults, defined once in SessionConfig (why pause drafts are off: there)
    partial_interval_ms: int = SessionConfig.partial_interval_ms
    pause_draft_ms: int = SessionConfig.pause_draft_ms  # a pause this long brings the partials up to date (0: off)
    vad_aggressiveness: int = 2
    silence_ms: int = 600
    max_sessions: int = 64
    max_connections_per_address: int = 32  # open plus handshaking, from one IP
    max_pending_handshakes: int = 64  # accepted sockets still in the websocket handshake
    handshake_timeout: float = 10.0  # seconds a socket may take to finish its handshake
    max_batch: int = 16
    idle_timeout: float = 30.0
    max_frame_bytes: int = 1 << 20
    max_upload_bytes: int = 25 << 20  # POST /v1/audio/transcriptions (OpenAI's own limit: 25 MB)
    warm_start: bool = False
    drain_timeout: float = 60.0  # on SIGTERM: seconds open sessions get to receive their finals
    auth_token: str | None = dataclasses.field(default=None, repr=False)  # None: no token needed (service.access)
    allowed_origins: tuple[str, ...] = ()  # websocket Origin headers accepted; empty: any
    server_details: bool = False  # Server header and /v1/models name versions and the device
    tls_cert: str | None = None  # PEM files: wss:// and https:// on the same port
    tls_key: str | None = None
    db: str | None = None  # rooms' transcripts: a SQLite file (None: in memory; the CLI names a file)
    room_idle_timeout: float = 300.0  # seconds a room stays live after its last participant left
    max_subscribers: int = 1024  # room readers on this server, all rooms together
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    log_transcripts: bool = False  # transcripts in the logs (never by default)
    whisper: str | None = None  # per-part overrides: HF repo id or directory
    backbone: str | None = None
    adapter: str | None = None


def max_steps(config: ServerConfig, spec) -> int:
    """The most denoising steps any request may ask for: the server's cap within the model's."""
    return min(config.max_steps or spec.max_steps, spec.max_steps)


def clamp_steps(config: ServerConfig, spec, asked: int | None, model_default: int, server_default: int | None) -> int:
    return max(1, min(asked or server_default or model_default, max_steps(config, spec)))


def session_config(config: ServerConfig, spec, draft_steps: int | None = None, final_steps: int | None = None,
                   silence_ms: int | None = None, seed: int = 0) -> SessionConfig:
    """A session's settings: steps clamped to the server's limits, the VAD fitted to the model's
    window (a client's ``silence_ms`` through :meth:`VadConfig.fit_silence_ms`)."""
    vad = VadConfig(
        aggressiveness=config.vad_aggressiveness,
        silence_ms=config.silence_ms,
        max_segment_s=max(2.0, spec.window_seconds - 0.5),
        split_search_s=min(3.0, spec.window_seconds / 4),
    )
    if silence_ms is not None:
        vad = dataclasses.replace(vad, silence_ms=vad.fit_silence_ms(silence_ms))
    return SessionConfig(
        model=spec.name,
        draft_steps=clamp_steps(config, spec, draft_steps, spec.draft_steps, config.draft_steps),
        final_steps=clamp_steps(config, spec, final_steps, spec.final_steps, config.final_steps),
        vad=vad,
        partial_interval_ms=config.partial_interval_ms,
        pause_draft_ms=config.pause_draft_ms,
        warm_start=config.warm_start,
        seed=seed,
    )
