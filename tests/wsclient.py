"""Test helpers: run a real dgasr server in-process and talk to it with real websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from server.engine import Engine
from server.service.config import ServerConfig
from server.transports.server import DgasrServer
from server.wire.v1 import ServerMessage, parse_server_message


@contextlib.asynccontextmanager
async def running_server(engine: Engine, **overrides) -> AsyncIterator[DgasrServer]:
    """A DgasrServer on 127.0.0.1 over an already started engine: a free port unless ``port=`` is given."""
    config = ServerConfig(**{"port": 0, **overrides})
    server = DgasrServer(config, engine)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(timeout=20)


def encode(audio: np.ndarray, encoding: str = "pcm_s16le") -> bytes:
    if encoding == "pcm_f32le":
        return audio.astype("<f4").tobytes()
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class SessionLog:
    messages: list[ServerMessage] = field(default_factory=list)
    close_code: int | None = None

    def of(self, kind: str) -> list:
        return [m for m in self.messages if m.type == kind]

    @property
    def types(self) -> list[str]:
        return [m.type for m in self.messages]


async def stream(
    url: str,
    audio: np.ndarray,
    *,
    rate: int = 16000,
    encoding: str = "pcm_s16le",
    chunk_ms: int = 100,
    speed: float | None = None,
    query: str = "",
    eos: bool = True,
    timeout: float = 60,
) -> SessionLog:
    """Send ``audio`` (already at ``rate``) as one session; collect every server message.

    ``speed``: None sends as fast as possible, 1.0 paces at real time, 4.0 at 4x.
    """
    log = SessionLog()
    sep = "&" if query else ""
    full = f"{url}/v1/listen?sample_rate={rate}&encoding={encoding}{sep}{query}"
    data = encode(audio, encoding)
    step = int(rate * chunk_ms / 1000) * (4 if encoding == "pcm_f32le" else 2)
    async with connect(full, max_size=None) as ws:

        async def send() -> None:
            try:
                for i in range(0, len(data), step):
                    await ws.send(data[i : i + step])
                    if speed:
                        await asyncio.sleep(chunk_ms / 1000 / speed)
                if eos:
                    await ws.send(json.dumps({"type": "eos"}))
            except ConnectionClosedOK:  # the server ended the session (shutdown): the rest is not sent
                pass

        sender = asyncio.create_task(send())
        async with asyncio.timeout(timeout):
            async for raw in ws:
                log.messages.append(parse_server_message(raw))
        await sender
        log.close_code = ws.close_code
    return log


def assert_protocol_order(log: SessionLog) -> None:
    """Every guarantee of docs/protocol.md that can be read off one session's messages."""
    assert_event_order(log.messages)
    assert log.close_code == 1000


def assert_event_order(messages: list[ServerMessage]) -> None:
    """The ordering guarantees of one session's events (a websocket log or a client's jsonl)."""
    log = SessionLog(list(messages))
    types = log.types
    assert types[0] == "ready", types
    assert types[-1] == "closed", types
    assert types.count("ready") == 1 and types.count("closed") == 1
    started = [m.segment for m in log.of("speech_started")]
    stopped = [m.segment for m in log.of("speech_stopped")]
    finals = [m.segment for m in log.of("final")]
    assert started == list(range(len(started))), started
    assert stopped == started, (started, stopped)
    assert finals == started, (started, finals)  # exactly one final each, in segment order
    position = {}
    for i, m in enumerate(log.messages):
        if m.type in ("speech_started", "speech_stopped", "final"):
            position[(m.type, m.segment)] = i
    for seg in started:
        assert position[("speech_started", seg)] < position[("speech_stopped", seg)] < position[("final", seg)]
        if seg > 0:
            assert position[("speech_started", seg - 1)] < position[("speech_started", seg)]
    for i, m in enumerate(log.messages):
        if m.type == "partial":
            assert position[("speech_started", m.segment)] < i < position[("speech_stopped", m.segment)], m
    assert log.messages[-1].segments == len(started)
    for f in log.of("final"):
        assert f.start <= f.end and f.latency_ms >= 0
