"""The server's settings, as one frozen value (filled by :mod:`server.cli.options` or by tests)."""

from __future__ import annotations

import dataclasses

__all__ = ["ServerConfig"]


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
    max_connections_per_address: int = 32  # open plus handshaking, from one IP
    max_pending_handshakes: int = 64  # accepted sockets still in the websocket handshake
    handshake_timeout: float = 10.0  # seconds a socket may take to finish its handshake
    max_batch: int = 16
    idle_timeout: float = 30.0
    max_frame_bytes: int = 1 << 20
    warm_start: bool = False
    log_level: str = "INFO"
    whisper: str | None = None  # per-part overrides: HF repo id or directory
    backbone: str | None = None
    adapter: str | None = None
