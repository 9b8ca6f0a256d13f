"""dgasr-client's websocket session against a small in-process stand-in server.

The stand-in speaks protocol v1 (ready, final per 0.5 s of audio, closed after eos) so the
client's connect, refusal, Ctrl-C and reconnect paths run without the model; the real
server's end-to-end tests live elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from client import cli
from client.mic import MicSource
from client.feeds import Backlog, IteratorFeed
from client.session import ClientError, ExitCode, build_url, converse, open_connection, run_live
from server.protocol import Closed, Final, ListenParams, Ready, ServerMessage

RATE = 16000
BPS = RATE * 2
SEG_BYTES = BPS // 2  # the stand-in finalizes every 0.5 s of audio


class StandIn:
    """Protocol v1 server double: one final per 0.5 s of audio, optional first-connection drop."""

    def __init__(self, drop_first_after: int | None = None, shut_down_after: int | None = None) -> None:
        self.drop_first_after = drop_first_after
        self.shut_down_after = shut_down_after  # the whole server goes away: reconnects fail
        self.server = None
        self.connections: list[bytearray] = []
        self.eos_seen = 0

    def refuse(self, conn: ServerConnection, request) -> Response | None:
        if "sample_rate=8001" in request.path:
            body = {"error": "bad_request", "field": "sample_rate", "message": "odd rate not allowed"}
            return Response(400, "Bad Request", Headers({"Content-Type": "application/json"}), json.dumps(body).encode())
        if "language=zh" in request.path:  # stands for "server full"
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, '{"error": "overloaded", "message": "full"}\n')
        return None

    async def handle(self, ws: ServerConnection) -> None:
        audio = bytearray()
        self.connections.append(audio)
        index, done = len(self.connections), 0
        await ws.send(Ready("s%d" % index, "stand-in", RATE, "pcm_s16le", None, 2, 8).to_json())
        async for frame in ws:
            if isinstance(frame, bytes):
                audio += frame
                if self.shut_down_after and len(audio) >= self.shut_down_after:
                    self.server.close()
                    return
                if index == 1 and self.drop_first_after and len(audio) >= self.drop_first_after:
                    await ws.close(1011, "stand-in drop")
                    return
                while len(audio) - done >= SEG_BYTES:
                    await ws.send(self._final(done, done + SEG_BYTES).to_json())
                    done += SEG_BYTES
            elif json.loads(frame)["type"] == "eos":
                self.eos_seen += 1
                if len(audio) > done:
                    await ws.send(self._final(done, len(audio)).to_json())
                await ws.send(Closed("eos", 1, len(audio) / BPS).to_json())
                await ws.close()
                return

    @staticmethod
    def _final(a: int, b: int) -> Final:
        return Final(a // SEG_BYTES, f"words {a / BPS:.1f}", a / BPS, b / BPS, 8, "en", 1.0)


async def _serve(stand_in: StandIn):
    server = await serve(stand_in.handle, "127.0.0.1", 0, process_request=stand_in.refuse)
    stand_in.server = server
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _wav(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, (np.sin(np.arange(int(seconds * RATE)) / 9) * 8000).astype(np.int16), RATE)
    return path


def test_build_url_adds_listen_path_and_query_when_given_base_address() -> None:
    """--url ws://host:port gets /v1/listen and the declared parameters."""
    url = build_url("http://h:1/", ListenParams(sample_rate=8000, language="de"))
    assert url == "ws://h:1/v1/listen?sample_rate=8000&encoding=pcm_s16le&interim_results=true&language=de"


def test_cli_prints_finals_and_sends_eos_when_file_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 1.2 s file gives three finals on stdout, eos at the end, exit 0."""

    async def run() -> int:
        stand_in = StandIn()
        server, url = await _serve(stand_in)
        async with server:
            code = await asyncio.to_thread(cli.main, ["--url", url, "--format", "text", str(_wav(tmp_path, 1.2))])
        assert stand_in.eos_seen == 1 and len(stand_in.connections[0]) == int(1.2 * BPS)
        return code

    assert asyncio.run(run()) == 0
    assert capsys.readouterr().out == "words 0.0\nwords 0.5\nwords 1.0\n"


@pytest.mark.parametrize(
    ("language", "rate", "expected"),
    [
        ("en", 8001, "server refused the connection (HTTP 400 Bad Request): sample_rate: odd rate not allowed"),
        ("zh", 16000, "server is busy (HTTP 503): full"),
    ],
)
def test_open_connection_shows_server_message_when_refused(language: str, rate: int, expected: str) -> None:
    """HTTP 400/503 at the handshake become one line with the server's JSON message."""

    params = ListenParams(language=language)
    object.__setattr__(params, "sample_rate", rate)  # bypass validation to provoke the 400

    async def run_with() -> ClientError:
        server, url = await _serve(StandIn())
        async with server:
            with pytest.raises(ClientError) as info:
                await open_connection(url, params)
            return info.value

    error = asyncio.run(run_with())
    assert str(error) == expected and error.code is ExitCode.SERVER


def test_cli_exits_4_with_one_line_when_server_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening on the port: one stderr line, exit code 4."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    assert cli.main(["--url", f"ws://127.0.0.1:{port}", str(_wav(tmp_path, 0.2))]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dgasr-client: cannot reach server at ws://127.0.0.1:{port}")


def test_converse_sends_eos_and_collects_finals_when_stopped_midway() -> None:
    """Ctrl-C (stop) cuts the input, sends eos and still returns the finals up to there."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)
            yield b"\0" * (BPS // 10)

    async def run() -> tuple[list[ServerMessage], int]:
        stand_in = StandIn()
        server, url = await _serve(stand_in)
        events: list[ServerMessage] = []
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        async with server:
            async with await open_connection(url, ListenParams()) as ws:
                outcome = await converse(ws, IteratorFeed(endless()), events.append, stop)
        assert outcome.eos_sent and isinstance(outcome.closed, Closed)
        return events, stand_in.eos_seen

    events, eos_seen = asyncio.run(run())
    finals = [e for e in events if isinstance(e, Final)]
    assert eos_seen == 1 and finals and isinstance(events[-1], Closed)
    assert finals[-1].end == events[-1].audio_seconds


def test_run_live_replays_uncommitted_audio_when_connection_drops() -> None:
    """After a drop the next connection re-sends audio from the last final on; times stay continuous."""
    chunk = BPS // 10  # 100 ms

    async def mic() -> AsyncIterator[bytes]:
        for i in range(20):  # 2 s of "speech", each chunk tagged with its index
            yield np.full(chunk // 2, i, dtype="<i2").tobytes()
            await asyncio.sleep(0.005)

    async def run() -> tuple[StandIn, list[ServerMessage]]:
        stand_in = StandIn(drop_first_after=int(0.8 * BPS))  # a final at 0.5 s, then a drop at 0.8 s
        server, url = await _serve(stand_in)
        events: list[ServerMessage] = []
        async with server:
            await run_live(url, ListenParams(), mic(), lambda: None, events.append, asyncio.Event(),
                           warn=lambda _: None, base_delay=0.01)
        return stand_in, events

    stand_in, events = asyncio.run(run())
    first, second = (np.frombuffer(bytes(c), dtype="<i2") for c in stand_in.connections)
    assert first[0] == 0 and second[0] == 5  # the replay starts where the 0.0-0.5 final ended
    assert np.array_equal(np.unique(second), np.arange(5, 20))
    finals = [(f.start, f.end) for f in events if isinstance(f, Final)]
    assert finals == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0)]


def test_run_live_gives_up_after_bounded_attempts_when_server_stays_down() -> None:
    """A server that vanishes is retried max_attempts times with backoff, then reported unreachable."""
    warnings: list[str] = []

    async def mic() -> AsyncIterator[bytes]:
        while True:
            yield b"\0" * (BPS // 10)
            await asyncio.sleep(0.005)

    async def run() -> ClientError:
        stand_in = StandIn(shut_down_after=int(0.3 * BPS))
        server, url = await _serve(stand_in)
        async with server:
            with pytest.raises(ClientError) as info:
                await run_live(url, ListenParams(), mic(), lambda: None, lambda _: None, asyncio.Event(),
                               warn=warnings.append, max_attempts=3, base_delay=0.1)
        return info.value

    error = asyncio.run(run())
    assert error.code is ExitCode.UNREACHABLE and "cannot reach server" in str(error)
    assert [w.split("reconnecting in")[1][:4] for w in warnings] == [" 0.1", " 0.2", " 0.4"]  # exponential
    assert [w.split("(attempt ")[1][:3] for w in warnings] == ["1/3", "2/3", "3/3"]


def test_backlog_keeps_only_uncommitted_audio_when_finals_arrive() -> None:
    """commit() frees audio a final covers; the bound drops the oldest chunks."""
    backlog = Backlog(bytes_per_second=100, max_seconds=1.0)
    for _ in range(8):
        backlog.append(b"x" * 10)  # 0.1 s each
    backlog.commit(0.25)
    assert (backlog.first_seq, backlog.start_seconds) == (2, 0.2)
    for _ in range(10):
        backlog.append(b"y" * 10)
    assert backlog.kept_seconds == pytest.approx(1.0) and backlog.first_seq == 8


class _ThreadedStandIn:
    """The stand-in on its own loop thread, so cli.main can own the main thread (and SIGINT)."""

    def __init__(self) -> None:
        self.stand_in = StandIn()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server, self.url = asyncio.run_coroutine_threadsafe(_serve(self.stand_in), self.loop).result(5)

    def close(self) -> None:
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_cli_mic_sends_captured_audio_then_eos_when_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mic with Ctrl-C: every block captured before SIGINT reaches the server, then eos; exit 0."""
    pushed: list[int] = []

    class PushingStream:
        """A capture stream (no sound card on CI) whose thread delivers 30 blocks, then hits Ctrl-C."""

        def __init__(self, *, samplerate, blocksize, device, channels, dtype, callback, finished_callback):
            self.blocksize, self.callback = blocksize, callback

        def start(self) -> None:
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            for i in range(30):
                self.callback(np.full((self.blocksize, 1), i / 100, dtype=np.float32), self.blocksize, None, None)
                pushed.append(i)
                time.sleep(0.002)
            os.kill(os.getpid(), signal.SIGINT)

        def stop(self) -> None:
            pass

        def close(self) -> None:
            pass

    class FakeMic(MicSource):
        def __init__(self, device, **kwargs) -> None:
            super().__init__(device, sample_rate=RATE, channels=1, stream_factory=PushingStream, **kwargs)

    monkeypatch.setattr(cli, "MicSource", FakeMic)
    server = _ThreadedStandIn()
    try:
        code = cli.main(["--url", server.url, "--mic", "--format", "text"])
    finally:
        server.close()
    assert code == 0, capsys.readouterr().err
    audio = np.frombuffer(bytes(server.stand_in.connections[0]), dtype="<i2")
    assert len(audio) == 30 * RATE // 10 and server.stand_in.eos_seen == 1
    assert capsys.readouterr().out == "".join(f"words {t / 10:.1f}\n" for t in range(0, 30, 5))
