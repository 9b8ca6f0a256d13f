"""Faults found by probing the real server as users and attackers would (issue: server layers, F1-F8).

Each test pins one fault: it failed before its fix. Real server on a free port, tiny-random engine,
real websocket clients and raw sockets on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import struct
import urllib.error
import urllib.request

import numpy as np
from audio_fixtures import speech_with_pauses
from websockets.asyncio.client import connect
from wsclient import encode, running_server, stream

from server.wire.v1 import parse_server_message


def _run(coro):
    return asyncio.run(coro)


async def _raw(port: int, request: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 5) if read else b""
    writer.close()
    return data


_UPGRADE = ("GET /v1/listen HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n")


def test_failed_handshakes_of_every_kind_hold_no_session_slot(tiny_engine):
    """F1: plain GETs (426), bad keys and versions (400), POSTs, hang-ups; then max_sessions real sessions open."""

    async def scenario():
        async with running_server(tiny_engine, max_sessions=3) as srv:
            url = f"http://127.0.0.1:{srv.port}/v1/listen"
            statuses = []
            for _ in range(4):
                try:
                    await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
                except urllib.error.HTTPError as exc:
                    statuses.append(exc.code)
                reply = await _raw(srv.port, _UPGRADE.format(key="bad", version=13).encode())
                statuses.append(int(reply.split()[1]))
                reply = await _raw(srv.port, _UPGRADE.format(key="dGhlIHNhbXBsZSBub25jZQ==", version=7).encode())
                statuses.append(int(reply.split()[1]))
                reply = await _raw(srv.port, _UPGRADE.replace("GET", "POST").format(
                    key="dGhlIHNhbXBsZSBub25jZQ==", version=13).encode())
                statuses.append(int(reply.split()[1]) if reply else 0)
                await _raw(srv.port, _UPGRADE.format(key="dGhlIHNhbXBsZSBub25jZQ==", version=13).encode(), read=False)
            await asyncio.sleep(0.3)
            clients = [await connect(f"ws://127.0.0.1:{srv.port}/v1/listen") for _ in range(3)]
            readies = [parse_server_message(await ws.recv()).type for ws in clients]
            for ws in clients:
                await ws.send('{"type": "eos"}')
                async for _ in ws:
                    pass
            return statuses, readies

    statuses, readies = _run(scenario())
    assert 101 not in statuses and len(statuses) == 16
    assert statuses.count(426) == 4 and statuses.count(400) >= 8
    assert readies == ["ready"] * 3


def test_a_client_that_stops_reading_and_resets_frees_its_slot_within_the_idle_timeout(tiny_engine):
    """F2: the writer blocks on a full socket, the client resets: the session ends anyway."""

    async def scenario():
        async with running_server(tiny_engine, idle_timeout=2.0) as srv:
            ws = await connect(f"ws://127.0.0.1:{srv.port}/v1/listen", max_queue=1)
            for i in range(6000):  # each draws an error reply the client never reads
                await ws.send(json.dumps({"type": "x" * 200, "i": i}))
            await asyncio.sleep(0.5)
            assert len(srv.connections) == 1
            sock = ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.transport.abort()  # RST
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while srv.connections and loop.time() - t0 < 10:
                await asyncio.sleep(0.1)
            return len(srv.connections), loop.time() - t0

    left, waited = _run(scenario())
    assert left == 0 and waited < 2.5


def test_a_json_integer_past_pythons_digit_limit_is_a_bad_message_not_a_crash(tiny_engine):
    """F3: json.loads raises ValueError for >4300-digit integers; the session goes on and closes cleanly."""

    async def scenario():
        async with running_server(tiny_engine) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen") as ws:
                await ws.send('{"type": "eos", "n": ' + "9" * 5000 + "}")
                await ws.send('{"type": "eos"}')
                return [parse_server_message(m) async for m in ws], ws.close_code

    messages, code = _run(scenario())
    assert [m.type for m in messages] == ["ready", "error", "closed"]
    assert messages[1].code == "bad_message" and "not valid JSON" in messages[1].message
    assert len(messages[1].message) < 300 and code == 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def test_error_replies_are_bounded_so_huge_unknown_types_do_not_grow_memory(tiny_engine):
    """F4: three non-reading clients send 1 MiB unknown types; RSS stays within 150 MB, echoes are cut."""

    async def scenario():
        async with running_server(tiny_engine, max_frame_bytes=2 << 20) as srv:
            url = f"ws://127.0.0.1:{srv.port}/v1/listen"
            base = _rss_mb()
            clients = [await connect(url, max_queue=1, max_size=None) for _ in range(3)]
            big = json.dumps({"type": "z" * (1 << 20)})
            for _ in range(40):
                for ws in clients:
                    await ws.send(big)
            await asyncio.sleep(1.0)
            grown = _rss_mb() - base
            sizes = [conn.outbox.size_bytes for conn in srv.connections.values()]
            async with connect(url, max_size=None) as reader:
                await reader.recv()
                await reader.send(big)
                error = parse_server_message(await reader.recv())
            for ws in clients:
                await ws.close()
            return grown, sizes, error

    grown, sizes, error = _run(scenario())
    assert grown < 150, grown
    assert all(size <= 256 * 1024 for size in sizes), sizes
    assert error.code == "bad_message" and len(error.message) < 300 and "(1048578 characters)" in error.message


def test_json_replies_carry_one_content_type(tiny_engine):
    """F7: /v1/models and the 400/404/503 bodies had text/plain and application/json both."""

    async def scenario():
        async with running_server(tiny_engine) as srv:
            base = f"http://127.0.0.1:{srv.port}"
            reply = await asyncio.to_thread(urllib.request.urlopen, f"{base}/v1/models", timeout=5)
            models = reply.headers.get_all("Content-Type")
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"{base}/nowhere", timeout=5)
            except urllib.error.HTTPError as exc:
                missing = exc.headers.get_all("Content-Type")
            return models, missing

    models, missing = _run(scenario())
    assert models == ["application/json"] and missing == ["application/json"]


def test_a_nan_frame_between_two_sentences_is_bad_audio_and_keeps_two_segments(tiny_engine):
    """F8: the dropped frame was filled by repeating the last good one, which merged the sentences."""
    audio, truth = speech_with_pauses(["Good morning everybody.", 0.7, "Let us begin the meeting now."])
    end_first = int(truth[0][1] * 16000)
    data = audio.astype("<f4").copy()
    data[end_first: end_first + 3200] = np.nan  # 200 ms right after the first sentence

    async def scenario():
        async with running_server(tiny_engine) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen?encoding=pcm_f32le") as ws:
                raw = data.tobytes()
                step = 1600 * 4
                for i in range(0, len(raw), step):
                    await ws.send(raw[i: i + step])
                await ws.send(encode(np.zeros(16000, np.float32), "pcm_f32le"))
                await ws.send('{"type": "eos"}')
                return [parse_server_message(m) async for m in ws]

    messages = _run(scenario())
    errors = [m for m in messages if m.type == "error"]
    finals = [m for m in messages if m.type == "final"]
    assert errors and all(e.code == "bad_audio" for e in errors)
    assert len(finals) == 2, [(f.start, f.end) for f in finals]
    assert abs(finals[1].start - truth[1][0]) < 0.45


def test_a_client_connecting_during_shutdown_gets_503_with_retry_after(tiny_engine):
    """F10: while sessions drain, new clients got a refused connection instead of the documented 503."""
    from websockets.exceptions import InvalidStatus

    async def scenario():
        async with running_server(tiny_engine, idle_timeout=3.0) as srv:
            url = f"ws://127.0.0.1:{srv.port}/v1/listen"
            slow = await connect(url, max_queue=1)  # never reads: its session drains slowly
            for i in range(3000):
                await slow.send(json.dumps({"type": "y" * 100, "i": i}))
            stopping = asyncio.create_task(srv.shutdown(timeout=10))
            await asyncio.sleep(0.3)
            try:
                async with connect(url):
                    status = 101
            except InvalidStatus as exc:
                status, retry = exc.response.status_code, exc.response.headers.get("Retry-After")
            ready = await asyncio.to_thread(_status, f"http://127.0.0.1:{srv.port}/readyz")
            slow.transport.abort()
            await stopping
            return status, retry, ready

    status, retry, ready = _run(scenario())
    assert status == 503 and int(retry) > 0 and ready == 503


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_idle_sockets_past_the_pending_handshake_bound_are_closed_and_a_real_session_still_works(tiny_engine):
    """F6: 40 TCP connections that never send a request; past 8 pending they are closed at accept,
    the rest time out after the handshake timeout, and a real client is served meanwhile."""

    async def scenario():
        async with running_server(tiny_engine, max_pending_handshakes=8, max_connections_per_address=64,
                                  handshake_timeout=1.5) as srv:
            idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(40)]
            await asyncio.sleep(0.2)
            held, refused = srv.admission.pending, srv.admission.refused_at_accept
            closed = 0
            for reader, _ in idle:  # refused ones read EOF at once, the rest after the timeout
                with contextlib.suppress(ConnectionError, TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 3) == b"":
                        closed += 1
            after = srv.admission.pending
            log = await stream(f"ws://127.0.0.1:{srv.port}", speech_with_pauses([0.3, "Hello there.", 0.8])[0])
            for _, writer in idle:
                writer.close()
            return held, refused, closed, after, log

    held, refused, closed, after, log = _run(scenario())
    assert (held, refused) == (8, 32)
    assert closed == 40 and after == 0
    assert log.types[0] == "ready" and log.types[-1] == "closed" and len(log.of("final")) == 1


def test_connections_past_the_per_address_bound_are_closed_at_accept(tiny_engine):
    """F6: with 2 connections per address, a third websocket from 127.0.0.1 fails its handshake; after one
    closes, a new one is served."""
    from websockets.exceptions import InvalidHandshake

    async def scenario():
        async with running_server(tiny_engine, max_connections_per_address=2) as srv:
            url = f"ws://127.0.0.1:{srv.port}/v1/listen"
            first, second = await connect(url), await connect(url)
            readies = [parse_server_message(await ws.recv()).type for ws in (first, second)]
            try:
                async with connect(url, open_timeout=5):
                    third = "served"
            except (InvalidHandshake, ConnectionError, EOFError) as exc:
                third = type(exc).__name__
            per_address = srv.admission.connections_from("127.0.0.1")
            await first.close()
            await asyncio.sleep(0.2)
            async with connect(url) as fourth:
                readies.append(parse_server_message(await fourth.recv()).type)
            await second.close()
            return readies, third, per_address, srv.admission.refused_at_accept

    readies, third, per_address, refused = _run(scenario())
    assert readies == ["ready"] * 3
    assert third != "served" and per_address == 2 and refused == 1


def test_shutdown_is_not_held_by_a_client_that_does_not_read(tiny_engine):
    """F10: shutdown with a client that reads nothing (and a backlog for it) ends within seconds,
    not the drain timeout; a reading client in the same shutdown still gets its final and closed."""

    async def scenario():
        loop = asyncio.get_running_loop()
        async with running_server(tiny_engine, idle_timeout=30.0) as srv:
            url = f"ws://127.0.0.1:{srv.port}/v1/listen"
            slow = await connect(url, max_queue=1)
            for i in range(3000):  # bad messages: a backlog of errors queued for a client not reading
                await slow.send(json.dumps({"type": "y" * 100, "i": i}))
            good = await connect(url)
            audio = speech_with_pauses([0.3, "Hello there.", 0.4])[0]
            await good.send(encode(audio))
            await asyncio.sleep(0.5)
            t0 = loop.time()
            stopping = asyncio.create_task(srv.shutdown(timeout=60))
            got = [parse_server_message(m).type async for m in good]
            await stopping
            took = loop.time() - t0
            slow.transport.abort()
            return got, took

    got, took = _run(scenario())
    assert got[0] == "ready" and got[-1] == "closed" and got.count("final") == 1
    assert took < 6  # was 10.7 s: the closing handshake waited websockets' default 10 s for a close frame
