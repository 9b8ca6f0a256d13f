"""Helpers for dgasr-client tests against the real server (tiny-random engine).

:class:`ServerThread` runs a real :class:`~server.transports.server.DgasrServer` (through
:func:`wsclient.running_server`) on its own event-loop thread, so the client under test
can own the main thread: ``cli.main`` calls ``asyncio.run`` and installs its SIGINT
handler there, as it does when a user runs it. The server can be stopped (the same
graceful shutdown SIGTERM triggers) and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
from audio_fixtures import SAMPLE_RATE
from wsclient import running_server

from server.engine import Engine
from server.transports.server import DgasrServer
from server.wire.v1 import Closed, Final, ServerMessage, parse_server_message

__all__ = ["REPO", "ServerThread", "server_process", "parse_jsonl", "finals", "spans", "assert_near", "write_wav", "client_process"]

REPO = Path(__file__).resolve().parents[1]


class ServerThread:
    """A real dgasr server on 127.0.0.1, served from a background event-loop thread."""

    def __init__(self, engine: Engine, **overrides) -> None:
        self.engine, self.overrides, self.port = engine, overrides, 0
        self.server: DgasrServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dgasr-test-server", daemon=True)
        self._thread.start()
        self._stack: contextlib.AsyncExitStack | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        """Start serving: on a free port the first time, on the same port after :meth:`stop`."""

        async def enter() -> tuple[contextlib.AsyncExitStack, DgasrServer]:
            stack = contextlib.AsyncExitStack()
            server = await stack.enter_async_context(running_server(self.engine, **self.overrides, port=self.port))
            return stack, server

        self._stack, self.server = self._call(enter())
        self.port = self.server.port

    def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: open segments finalized, ``closed`` (shutdown) sent."""
        stack, self._stack = self._stack, None
        if stack is not None:
            self._call(stack.aclose())

    def sessions(self) -> int:
        """Sessions open on the running server (0 while stopped)."""
        server = self.server if self._stack is not None else None
        return len(server.connections) if server is not None else 0

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def parse_jsonl(text: str) -> list[ServerMessage]:
    """A ``--format jsonl`` transcript, each line parsed as the protocol message it must be."""
    assert text.endswith("\n"), text[-200:]
    return [parse_server_message(line) for line in text.splitlines()]


def finals(messages: list[ServerMessage]) -> list[Final]:
    return [m for m in messages if isinstance(m, Final)]


def closes(messages: list[ServerMessage]) -> list[Closed]:
    return [m for m in messages if isinstance(m, Closed)]


def spans(messages: list[ServerMessage]) -> list[tuple[float, float]]:
    return [(f.start, f.end) for f in finals(messages)]


def assert_near(found: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float = 0.45) -> None:
    """One final per spoken sentence, each within ``tol`` seconds of where the speech is."""
    assert len(found) == len(truth), (found, truth)
    for (s, e), (ts, te) in zip(found, truth):
        assert abs(s - ts) <= tol and abs(e - te) <= tol, (found, truth)


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


def client_process(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``python -m client ARGS`` in its own session (its own process group), pipes for stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
        **popen,
    )


def server_process(*options: str, timeout: float = 90) -> tuple[subprocess.Popen, int]:
    """``dgasr-server --model tiny-random --port 0 OPTIONS`` as a process, once its engine is ready;
    returns it and the port it chose (read from its "listening on" log line)."""
    if "--db" not in options:  # tests keep nothing in the user's ~/.local/share
        options = ("--db", ":memory:", *options)
    proc = subprocess.Popen([sys.executable, "-m", "server", "--model", "tiny-random", "--port", "0",
                             "--log-level", "INFO", *options],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    import time

    port, lines = None, [""]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (port and "engine ready" in lines[-1]):
        lines.append(proc.stderr.readline())
        if "listening on ws://" in lines[-1]:
            port = int(lines[-1].split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
    if not port:
        proc.kill()
        raise AssertionError("server did not start:\n" + "".join(lines))
    return proc, port
