"""dgasr-client's websocket side against the real server: refusals, Ctrl-C, reconnects, replay.

The server is the real one (tiny-random engine), in-process: :func:`wsclient.running_server`
on the test's own loop, or :class:`clientkit.ServerThread` when ``cli.main`` needs the main
thread. Stand-ins remain only for what the real server never does (accept and then stay
silent); each such test says so.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from audio_fixtures import SAMPLE_RATE, speech_with_pauses
from clientkit import ServerThread, assert_near, spans, write_wav
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import connect as sync_connect
from wsclient import assert_event_order, encode, running_server

from client import cli
from client.feeds import Backlog, IteratorFeed
from client.session import (
    ClientError,
    ExitCode,
    build_url,
    converse,
    open_connection,
    run_live,
)
from server.wire.v1 import Closed, Final, ListenParams, ServerMessage

BPS = SAMPLE_RATE * 2
CHUNK = BPS // 10  # 100 ms of s16le, what the client sends per frame
THREE = [0.3, "Hello there.", 0.7, "The quick brown fox jumps over the lazy dog.", 0.7, "Good morning.", 0.8]


def _chunks(audio: np.ndarray) -> list[bytes]:
    data = encode(audio)
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def test_build_url_adds_listen_path_and_query_when_given_base_address() -> None:
    """--url ws://host:port gets /v1/listen and the declared parameters."""
    url = build_url("http://h:1/", ListenParams(sample_rate=8000, language="de"))
    assert url == "ws://h:1/v1/listen?sample_rate=8000&encoding=pcm_s16le&interim_results=true&language=de"


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


def test_cli_exits_4_with_one_line_when_server_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening on the port: one stderr line, exit code 4."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    wav = write_wav(tmp_path / "a.wav", np.zeros(3200, np.float32))
    assert cli.main(["--url", f"ws://127.0.0.1:{port}", str(wav)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dgasr-client: cannot reach server at ws://127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("path", "max_sessions", "expected"),
    [
        ("/v1/listen?bogus=1", 64, "server refused the connection (HTTP 400 Bad Request): bogus: unknown parameter; "
                                   "known: draft_steps, encoding, final_steps, interim_results, language, room, sample_rate, speaker"),
        ("", 1, "server is busy (HTTP 503); retry after 2 s: server is full (1 sessions)"),
    ],
    ids=["http-400-bad-parameter", "http-503-full"],
)
def test_cli_exits_1_with_the_servers_message_when_refused(
    tiny_engine, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, max_sessions: int, expected: str
) -> None:
    """The real server's 400 (unknown parameter) and 503 (full) become one stderr line with its message, exit 1."""
    server = ServerThread(tiny_engine, max_sessions=max_sessions)
    wav = write_wav(tmp_path / "a.wav", np.zeros(3200, np.float32))
    try:
        with sync_connect(f"{server.url}/v1/listen") as held:  # one session open: full when max_sessions=1
            assert '"ready"' in held.recv(timeout=10)
            code = cli.main(["--url", server.url + path, str(wav)])
    finally:
        server.close()
    captured = capsys.readouterr()
    assert (code, captured.out, captured.err) == (1, "", f"dgasr-client: {expected}\n")


def test_converse_sends_eos_and_collects_finals_when_stopped_midway(tiny_engine) -> None:
    """Ctrl-C (stop) mid-sentence ends the input, sends eos, and still returns the final of the cut sentence."""
    audio, truth = speech_with_pauses(THREE)
    chunks = _chunks(audio[: int((truth[1][0] + 1.0) * SAMPLE_RATE)])  # a second into sentence two

    async def scenario() -> tuple[list[ServerMessage], bool]:
        stop = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            for chunk in chunks:
                await asyncio.sleep(0.002)
                yield chunk
            stop.set()  # the user's Ctrl-C; the input itself would go on
            await asyncio.Event().wait()

        events: list[ServerMessage] = []
        async with running_server(tiny_engine) as srv:
            async with await open_connection(f"ws://127.0.0.1:{srv.port}", ListenParams()) as ws:
                outcome = await converse(ws, IteratorFeed(source()), events.append, stop)
        return events, outcome.eos_sent

    events, eos_sent = asyncio.run(scenario())
    assert eos_sent
    assert_event_order(events)
    closed = events[-1]
    assert closed.reason == "eos" and closed.audio_seconds == pytest.approx(sum(map(len, chunks)) / BPS)
    (s1, s2) = spans(events)
    assert_near([s1], truth[:1])
    assert abs(s2[0] - truth[1][0]) <= 0.45 and s2[1] == pytest.approx(closed.audio_seconds, abs=0.1)


def test_run_live_gives_up_after_bounded_attempts_when_server_stays_down(tiny_engine) -> None:
    """The real server shuts down (closed: shutdown) and stays down: 3 reconnects with backoff, then exit code 4."""
    warnings: list[str] = []
    audio, _ = speech_with_pauses(THREE)

    async def scenario() -> ClientError:
        async with running_server(tiny_engine) as srv:

            async def mic() -> AsyncIterator[bytes]:
                for i, chunk in enumerate(_chunks(audio) * 10):
                    if i == 10:
                        asyncio.create_task(srv.shutdown())  # what SIGTERM does
                    yield chunk
                    await asyncio.sleep(0.005)

            with pytest.raises(ClientError) as info:
                await run_live(f"ws://127.0.0.1:{srv.port}", ListenParams(), mic(), lambda: None, lambda _: None,
                               asyncio.Event(), warn=warnings.append, max_attempts=3, base_delay=0.1)
        return info.value

    error = asyncio.run(scenario())
    assert error.code is ExitCode.UNREACHABLE and "cannot reach server" in str(error)
    assert warnings[0].startswith("server ended the session (shutdown); reconnecting in 0.1 s (attempt 1/3)")
    assert all(w.startswith("cannot reach server") for w in warnings[1:])
    assert [w.split("reconnecting in ")[1][:5] for w in warnings] == ["0.1 s", "0.2 s", "0.4 s"]  # exponential
    assert len(warnings) == 3


class FlakyNetwork:
    """The TCP path between the client and the real server, which :meth:`cut` breaks like a failing network.

    Not a server stand-in: it forwards bytes to the real server. It exists because the
    real server never drops a connection without ``closed`` by itself; a network does.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream: list[int] = []  # bytes sent by the client, per connection
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        index = len(self.upstream)
        self.upstream.append(0)
        self._links.append((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            with suppress(ConnectionError):
                while data := await src.read(65536):
                    self.upstream[index] += len(data) if count else 0
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def cut(self) -> None:
        """Drop every live connection at once: no close frame, no FIN, to either side."""
        for a, b in self._links:
            a.transport.abort()
            b.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()


def test_run_live_replays_uncommitted_audio_when_the_network_drops(tiny_engine) -> None:
    """A dropped connection mid-sentence: the next one replays from the last final, so that sentence is whole."""
    audio, truth = speech_with_pauses(THREE)
    chunks = _chunks(audio)
    cut_at = int((truth[1][0] + 0.8) * 10)  # chunk index 0.8 s into sentence two
    warnings: list[str] = []

    async def scenario() -> tuple[list[ServerMessage], list[int]]:
        events: list[ServerMessage] = []
        first_final = asyncio.Event()

        def on_event(message: ServerMessage) -> None:
            events.append(message)
            if isinstance(message, Final):
                first_final.set()

        async with running_server(tiny_engine) as srv:
            network = FlakyNetwork(srv.port)
            url = await network.start()

            async def mic() -> AsyncIterator[bytes]:
                for i, chunk in enumerate(chunks):
                    if i == cut_at:
                        await first_final.wait()  # sentence one is final (committed) before the drop
                        network.cut()
                    yield chunk
                    await asyncio.sleep(0.01)

            closed = await run_live(url, ListenParams(), mic(), lambda: None, on_event, asyncio.Event(),
                                    warn=warnings.append, base_delay=0.05)
            await network.close()
        assert isinstance(closed, Closed) and closed.reason == "eos"
        return events, network.upstream

    events, upstream = asyncio.run(scenario())
    assert len(warnings) == 1 and warnings[0].startswith("connection lost: the connection dropped; reconnecting")
    assert [m.segment for m in events if isinstance(m, Final)] == [0, 1, 2]
    assert_near(spans(events), truth)  # sentence two transcribed whole on the second connection, once
    # The second connection carried the audio from sentence one's final on (frames cost 8 bytes each, plus
    # the handshake and eos): the replay started at the oldest uncommitted chunk.
    s1_end = spans(events)[0][1]
    replayed = (upstream[1] - 400) / (CHUNK + 8) / 10
    assert len(upstream) == 2 and abs(replayed - (len(audio) / SAMPLE_RATE - s1_end)) <= 0.2, (replayed, s1_end)


# ---- stand-ins: what the real server never does ------------------------------------


def test_converse_gives_up_after_eos_wait_when_server_never_answers() -> None:
    """Stand-in (the real server always answers eos): a silent server costs Ctrl-C at most eos_wait seconds."""

    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def scenario() -> ClientError:
        stop = asyncio.Event()

        async def source() -> AsyncIterator[bytes]:
            yield b"\0" * CHUNK
            stop.set()
            await asyncio.Event().wait()

        async with serve(silent, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with await open_connection(url, ListenParams()) as ws:
                with pytest.raises(ClientError) as info:
                    await asyncio.wait_for(converse(ws, IteratorFeed(source()), lambda _: None, stop, eos_wait=0.3), 5)
        return info.value

    error = asyncio.run(scenario())
    assert str(error) == "server did not finish within 0.3 s after Ctrl-C; the last finals may be missing"


def test_open_connection_reports_unreachable_when_handshake_never_answered() -> None:
    """Stand-in (the real server always answers the upgrade): a mute TCP listener is 'unreachable' after the timeout."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    async def scenario() -> ClientError:
        async with await asyncio.start_server(mute, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            with pytest.raises(ClientError) as info:
                await open_connection(url, ListenParams(), open_timeout=0.3)
        return info.value

    error = asyncio.run(scenario())
    assert error.code is ExitCode.UNREACHABLE and str(error).endswith("no answer within 0.3 s")
