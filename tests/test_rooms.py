"""Meeting rooms: publishers on /v1/listen?room=, subscribers on /v1/rooms/NAME, transcripts in SQLite.

A real server (tiny-random engine) on a real port, real websocket clients, a real SQLite
file; the transcript must survive a restart of the server on the same file.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import srt
import webvtt
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wsclient import stream

from server.core.events import Draft, Final, SpeechStarted
from server.service.rooms import SUBSCRIBER_QUEUE, RoomHub
from server.service.store import SqliteStore
from server.wire.rooms import encode_room_event

ALICE = [0.4, "Good morning everyone, let us begin.", 0.9, "The first item is the budget.", 0.7]
BOB = [0.9, "Thanks Alice.", 0.8, "I have the numbers here.", 0.8, "They look fine to me.", 0.6]


async def _subscribe(url: str, name: str, ready: asyncio.Event, stop: asyncio.Event, got: list[dict]) -> list[dict]:
    async with connect(f"{url}/v1/rooms/{name}") as ws:
        got.append(json.loads(await ws.recv()))
        ready.set()
        while not stop.is_set():
            try:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
            except TimeoutError:
                continue
    return got


def test_two_publishers_reach_a_subscriber_in_order_and_the_transcript_survives_a_restart(tiny_engine, tmp_path):
    alice_audio, alice_truth = speech_with_pauses(ALICE)
    bob_audio, bob_truth = speech_with_pauses(BOB, voice="en+m3")
    srv = ServerThread(tiny_engine, db=str(tmp_path / "rooms.sqlite3"))

    async def meeting():
        ready, stop, got = asyncio.Event(), asyncio.Event(), []
        reader = asyncio.create_task(_subscribe(srv.url, "standup", ready, stop, got))
        await ready.wait()
        alice, bob = await asyncio.gather(
            stream(srv.url, alice_audio, query="room=standup&speaker=alice", speed=4.0),
            stream(srv.url, bob_audio, query="room=standup&speaker=bob", speed=4.0))
        wanted = len(alice.of("final")) + len(bob.of("final"))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if sum(1 for m in got if m["type"] == "final") >= wanted:
                break
        stop.set()
        return alice, bob, await reader

    try:
        alice, bob, messages = asyncio.run(meeting())
        base = f"http://127.0.0.1:{srv.port}/v1/rooms"
        formats = {fmt: httpx.get(f"{base}/standup/transcript", params={"format": fmt}) for fmt in
                   ("json", "txt", "srt", "vtt")}
        srv.stop()
        srv.start()  # same port, same database file
        after = httpx.get(f"{base}/standup/transcript").json()
        listing = httpx.get(base).json()["rooms"]
    finally:
        srv.close()

    assert messages[0]["type"] == "room" and messages[0]["room"] == "standup"
    assert len(alice.of("final")) == len(alice_truth) == 2 and len(bob.of("final")) == len(bob_truth) == 3
    for speaker, log in (("alice", alice), ("bob", bob)):
        mine = [m for m in messages if m.get("speaker") == speaker]
        assert len({m["stream"] for m in mine}) == 1
        finals = [m for m in mine if m["type"] == "final"]
        assert [f["segment"] for f in finals] == [0, 1, 2][: len(log.of("final"))]  # its own segment order
        assert [f["text"] for f in finals] == [f.text for f in log.of("final")]
        offsets = {round(f["start"] - own.start, 3) for f, own in zip(finals, log.of("final"))}
        assert len(offsets) == 1 and offsets.pop() >= 0  # one room clock: the publisher's times, shifted
        kinds = [m["type"] for m in mine]
        assert kinds.index("speech_started") < kinds.index("final")

    body = formats["json"].json()
    stored = body["finals"]
    assert formats["json"].status_code == 200 and body["room"] == "standup"
    assert [f["start"] for f in stored] == sorted(f["start"] for f in stored)
    assert sorted(f["speaker"] for f in stored) == ["alice", "alice", "bob", "bob", "bob"]
    cues = list(srt.parse(formats["srt"].text))
    assert [c.content for c in cues] == [f"{f['speaker']}: {f['text']}" for f in stored]
    captions = webvtt.from_string(formats["vtt"].text).captions
    assert [c.text for c in captions] == [c.content for c in cues]
    lines = formats["txt"].text.splitlines()
    assert len(lines) == 5 and all(line.startswith("[00:00:") for line in lines)
    assert after == body  # the restart kept every final
    room = next(r for r in listing if r["name"] == "standup")
    assert room["finals"] == 5 and set(room["speakers"]) == {"alice", "bob"} and room["live"] is False


async def _handshake(url: str) -> int:
    """The HTTP status of a websocket handshake: 101 when it opened."""
    try:
        async with connect(url):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_bad_room_names_and_speakers_are_refused_before_the_upgrade(tiny_engine):
    srv = ServerThread(tiny_engine)

    def status(path: str):
        return _handshake(f"{srv.url}{path}")

    try:
        assert asyncio.run(status("/v1/listen?room=no%20spaces&speaker=a")) == 400
        assert asyncio.run(status("/v1/listen?speaker=alice")) == 400  # a speaker needs a room
        assert asyncio.run(status("/v1/listen?room=ok&speaker=" + "x" * 80)) == 400
        assert asyncio.run(status("/v1/rooms/bad%20name")) == 404
        assert asyncio.run(status("/v1/rooms/fine")) == 101
        refused = httpx.get(f"http://127.0.0.1:{srv.port}/v1/listen", params={"room": "a b"}).json()
        assert refused["field"] == "room" and "letters" in refused["message"]
        assert httpx.get(f"http://127.0.0.1:{srv.port}/v1/rooms/never-used/transcript").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{srv.port}/v1/rooms/x/transcript?format=doc").status_code == 400
    finally:
        srv.close()


def test_an_idle_room_leaves_the_live_list_and_its_transcript_stays_until_deleted(tiny_engine):
    audio, truth = speech_with_pauses(ALICE)
    srv = ServerThread(tiny_engine, room_idle_timeout=0.5)
    base = f"http://127.0.0.1:{srv.port}/v1/rooms"
    try:
        log = asyncio.run(stream(srv.url, audio, query="room=retro&speaker=carol"))
        live = httpx.get(base).json()["rooms"]
        assert [r["live"] for r in live if r["name"] == "retro"] == [True]
        for _ in range(60):
            asyncio.run(asyncio.sleep(0.1))
            if not next(r for r in httpx.get(base).json()["rooms"] if r["name"] == "retro")["live"]:
                break
        room = next(r for r in httpx.get(base).json()["rooms"] if r["name"] == "retro")
        assert room["live"] is False and room["finals"] == len(log.of("final")) == len(truth)
        assert httpx.delete(f"{base}/retro/transcript").json() == {"deleted": "retro"}
        assert httpx.delete(f"{base}/retro/transcript").status_code == 404
        assert httpx.get(f"{base}/retro/transcript").status_code == 404
        assert "retro" not in [r["name"] for r in httpx.get(base).json()["rooms"]]
    finally:
        srv.close()


def test_a_subscriber_that_does_not_read_is_cut_off_without_slowing_anyone(tmp_path):
    """The hub, driven directly: publishing never blocks; the reader that keeps up gets every final;
    the one that never reads stays within its bound and is flagged for disconnection."""

    async def scenario():
        hub = RoomHub(SqliteStore(str(tmp_path / "r.sqlite3")), encode_room_event, clock=lambda: 1000.0)
        observe = await hub.publisher("big", "dana", "s1")
        reader, _ = await hub.subscribe("big")
        idle, _ = await hub.subscribe("big")
        finals = SUBSCRIBER_QUEUE[0] + 40
        read: list = []
        for segment in range(finals):
            observe(SpeechStarted(segment, segment * 2.0))
            for i in range(5):
                observe(Draft(segment, f"draft {i}", segment * 2.0, segment * 2.0 + i / 10, 1))
            observe(Final(segment, f"final {segment}", segment * 2.0, segment * 2.0 + 1, 8, "en", 10.0))
            await hub.flush("big")
            while len(reader.outbox):
                read.append((await reader.outbox.get())[0])
        stored = await hub.store.transcript("big")
        await hub.close()
        return read, idle, stored, finals

    read, idle, stored, finals = asyncio.run(scenario())
    assert [e.event.text for e in read if isinstance(e.event, Final)] == [f"final {i}" for i in range(finals)]
    assert len(idle.outbox) <= SUBSCRIBER_QUEUE[0] and idle.overflowed.is_set() and idle.outbox.dropped_partials > 0
    assert [f.text for f in stored] == [f"final {i}" for i in range(finals)]


def test_a_newer_partial_replaces_only_its_own_publishers_partial(tmp_path):
    async def scenario():
        hub = RoomHub(SqliteStore(":memory:"), encode_room_event, clock=lambda: 50.0)
        alice, bob = await hub.publisher("r", "alice", "a"), await hub.publisher("r", "bob", "b")
        reader, _ = await hub.subscribe("r")
        for observe in (alice, bob):
            observe(SpeechStarted(0, 0.0))
        for i in range(3):
            alice(Draft(0, f"alice {i}", 0.0, 0.5 + i, 1))
            bob(Draft(0, f"bob {i}", 0.0, 0.5 + i, 1))
        await hub.flush("r")
        queued = [(await reader.outbox.get())[0] for _ in range(len(reader.outbox))]
        await hub.close()
        return queued

    queued = asyncio.run(scenario())
    drafts = [(e.speaker, e.event.text) for e in queued if isinstance(e.event, Draft)]
    assert drafts == [("alice", "alice 2"), ("bob", "bob 2")]


def test_a_final_a_subscriber_saw_survives_a_crash_of_the_server(tmp_path):
    """kill -9 right after a subscriber got a final: the restarted server still has it."""
    import signal as _signal

    from clientkit import server_process

    audio, _ = speech_with_pauses(ALICE)
    db = str(tmp_path / "crash.sqlite3")
    proc, port = server_process("--db", db)
    try:
        async def until_first_final() -> dict:
            async with connect(f"ws://127.0.0.1:{port}/v1/rooms/ops") as sub:
                await sub.recv()
                publisher = asyncio.create_task(stream(f"ws://127.0.0.1:{port}", audio,
                                                       query="room=ops&speaker=erin", speed=4.0))
                while (message := json.loads(await sub.recv()))["type"] != "final":
                    pass
                proc.send_signal(_signal.SIGKILL)  # no shutdown, no flush: only what is on disk survives
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
                return message

        seen = asyncio.run(until_first_final())
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, port = server_process("--db", db)
    try:
        stored = httpx.get(f"http://127.0.0.1:{port}/v1/rooms/ops/transcript").json()["finals"]
    finally:
        proc.send_signal(_signal.SIGTERM)
        proc.wait(30)
    assert (seen["speaker"], seen["segment"], seen["text"]) in [(f["speaker"], f["segment"], f["text"]) for f in stored]


def test_dgasr_client_publishes_into_a_room_with_its_speaker_label(tiny_engine, tmp_path, capsys):
    from clientkit import write_wav

    from client.cli import main as client_main

    audio, truth = speech_with_pauses(ALICE)
    srv = ServerThread(tiny_engine)
    try:
        path = write_wav(tmp_path / "alice.wav", audio)
        assert client_main(["--url", srv.url, "--room", "review", "--speaker", "frank", str(path)]) == 0
        printed = capsys.readouterr().out.splitlines()
        stored = httpx.get(f"http://127.0.0.1:{srv.port}/v1/rooms/review/transcript").json()["finals"]
        assert client_main(["--url", srv.url, "--room", "bad name", str(path)]) == 2
        assert "--room" in capsys.readouterr().err
    finally:
        srv.close()
    assert [f["speaker"] for f in stored] == ["frank"] * len(truth)
    assert [f["text"] for f in stored] == [line for line in printed if line]


def test_subscribers_past_the_servers_bound_get_503(tiny_engine):
    srv = ServerThread(tiny_engine, max_subscribers=2)

    async def scenario():
        async with connect(f"{srv.url}/v1/rooms/a") as one, connect(f"{srv.url}/v1/rooms/b") as two:
            await one.recv(), await two.recv()
            return await _handshake(f"{srv.url}/v1/rooms/a")

    try:
        assert asyncio.run(scenario()) == 503
    finally:
        srv.close()
