"""dgasr-server's command line: the options that fill a :class:`~server.service.config.ServerConfig`.

Nothing here imports torch or the engine, so ``dgasr-server --help`` and a bad option
answer at once; the server itself (:mod:`server.transports.server`) is imported only after parsing.
"""

from __future__ import annotations

import argparse
import os

from server.service.access import read_token
from server.service.config import ServerConfig

__all__ = ["ServerConfig", "parse_args"]

_OPTIONS: list[tuple[str, type, str]] = [
    ("host", str, "interface to listen on"),
    ("port", int, "TCP port (0 picks a free one)"),
    ("model", str, "auto (real model on CUDA, else demo) | diffusion-gemma-asr-small | demo | tiny-random | model directory"),
    ("device", str, "auto | cpu | cuda | cuda:N"),
    ("draft_steps", int, "denoising steps for partials (default: the model's)"),
    ("final_steps", int, "denoising steps for finals (default: the model's)"),
    ("max_steps", int, "upper limit for steps a client may ask for"),
    ("partial_interval_ms", int, "new speech between two partials"),
    ("pause_draft_ms", int, "a pause this long after undrafted speech sends a partial of it all (0: off)"),
    ("vad_aggressiveness", int, "webrtcvad aggressiveness 0-3"),
    ("silence_ms", int, "silence that ends a segment"),
    ("max_sessions", int, "concurrent sessions; more get HTTP 503"),
    ("max_connections_per_address", int, "connections (open or handshaking) from one IP; more are closed at accept"),
    ("max_pending_handshakes", int, "sockets still in the websocket handshake; more are closed at accept"),
    ("handshake_timeout", float, "seconds a new socket may take to finish its websocket handshake"),
    ("max_batch", int, "requests per engine batch (1 disables batching)"),
    ("idle_timeout", float, "seconds without audio or keepalive before a session is closed"),
    ("max_frame_bytes", int, "largest websocket frame accepted"),
    ("max_upload_bytes", int, "largest POST /v1/audio/transcriptions body; bigger ones get HTTP 413"),
    ("drain_timeout", float, "on SIGTERM, seconds open sessions get to receive their finals before exit"),
    ("auth_token", str, "require this token (Authorization: Bearer/Token, or ?token=) on every endpoint but "
                        "/healthz and /readyz"),
    ("auth_token_file", str, "read the auth token from the first line of this file"),
    ("allowed_origins", str, "comma-separated websocket Origins allowed (browsers); others get 403"),
    ("tls_cert", str, "PEM certificate (chain): serve wss:// and https://"),
    ("tls_key", str, "PEM private key for --tls-cert"),
    ("db", str, "where rooms' transcripts are kept: a SQLite file"),
    ("room_idle_timeout", float, "seconds a room stays in the live list after its last participant left"),
    ("max_subscribers", int, "room subscribers on this server (all rooms); more get HTTP 503"),
    ("log_level", str, "DEBUG, INFO, WARNING, ERROR"),
    ("log_format", str, "text | json (one JSON object per line)"),
    ("whisper", str, "whisper encoder: HF repo id or directory (overrides the model's)"),
    ("backbone", str, "DiffusionGemma backbone: HF repo id or directory (overrides the model's)"),
    ("adapter", str, "projector + LoRA adapter: HF repo id or directory (overrides the model's)"),
]


def default_db(environ) -> str:
    """``$XDG_DATA_HOME/dgasr/rooms.sqlite3`` (``~/.local/share/dgasr/rooms.sqlite3``)."""
    base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "dgasr", "rooms.sqlite3")


_FLAGS: list[tuple[str, str]] = [
    ("warm_start", "start each final (and draft) from the segment's last draft canvas"),
    ("server_details", "name the Python/websockets versions in the Server header and the device in /v1/models"),
    ("log_transcripts", "write transcripts into the logs (off: logs never hold what was said)"),
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
        default = getattr(defaults, name, None) if name != "db" else default_db(environ)
        if isinstance(default, tuple):
            default = ",".join(default)
        if env in environ:
            try:
                default = kind(environ[env])
            except ValueError:
                parser.error(f"{env}={environ[env]!r} is not a valid {kind.__name__}")
        shown = "none" if default in (None, "") else ("(set)" if name.startswith("auth_token") else default)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                            help=f"{help_text} (env {env}; default: {shown})")
    for flag, help_text in _FLAGS:
        env = f"DGASR_{flag.upper()}"
        parser.add_argument(f"--{flag.replace('_', '-')}", action="store_true",
                            default=environ.get(env, "").lower() in ("1", "true", "yes", "on"),
                            help=f"{help_text} (env {env})")
    args = parser.parse_args(argv)
    try:
        args.auth_token = read_token(args.auth_token, args.auth_token_file)
    except ValueError as exc:
        parser.error(str(exc))
    del args.auth_token_file
    args.allowed_origins = tuple(o.strip() for o in (args.allowed_origins or "").split(",") if o.strip())
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not os.path.isfile(path):
            parser.error(f"{flag} {path}: no such file")
    if args.log_format not in ("text", "json"):
        parser.error(f"--log-format must be text or json, got {args.log_format!r}")
    if not 0 <= args.vad_aggressiveness <= 3:
        parser.error("--vad-aggressiveness must be 0-3")
    if min(args.max_batch, args.max_sessions, args.max_connections_per_address, args.max_pending_handshakes,
           args.max_upload_bytes) < 1:
        parser.error("--max-batch, --max-sessions, --max-connections-per-address, --max-pending-handshakes "
                     "and --max-upload-bytes must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535 (0 picks a free one), got {args.port}")
    return ServerConfig(**vars(args))


