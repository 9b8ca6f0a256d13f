"""`dgasr-server`'s entry point: options first (no torch), then the server.

Exit codes: 0 stopped cleanly (SIGINT/SIGTERM), 1 the model could not be loaded,
2 bad usage (an option, or an address that cannot be listened on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import ssl
import sys
import time

from server.cli.options import parse_args
from server.service.config import ServerConfig

__all__ = ["cpu_threads", "main", "serve_until_signalled"]

log = logging.getLogger("dgasr.server")


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line (time, level, logger, message; the
    exception's text when there is one), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: ServerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config)
    return asyncio.run(serve_until_signalled(config))


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
    """Load the model behind a listening server; serve until SIGINT/SIGTERM; the exit code."""
    from server.engine import (  # torch: only now
        Engine,
        EngineState,
        ModelLoadError,
        load_model,
    )
    from server.engine.loader import resolve_device, resolve_model_name
    from server.transports.server import DgasrServer

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
    try:
        server = DgasrServer(config, engine)
    except (ValueError, OSError, sqlite3.Error) as exc:  # the rooms' database: a bad path, no driver
        log.error("cannot open the rooms database %s: %s", config.db, exc)
        return 2
    try:  # bind first: a port in use must not cost a model load
        await server.start()  # /healthz answers while the model loads; /readyz once it is warm
    except ssl.SSLError as exc:
        log.error("cannot use the TLS certificate %s / key %s: %s", config.tls_cert, config.tls_key, exc.reason or exc)
        return 2
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
    await server.shutdown(timeout=config.drain_timeout)
    engine.close()
    log.info("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
