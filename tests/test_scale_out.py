"""Two dgasr replicas behind a real HAProxy (deploy/haproxy.cfg), sharing a real PostgreSQL.

Eight concurrent streams go through HAProxy (six independent, two publishing into one
room); one replica is drained (SIGTERM) mid-run. No final may be lost or duplicated: every
segment that started has exactly one final, in order, on every stream; the room's
transcript is the same from either replica (the drained one restarted on the same store).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess

import httpx
from audio_fixtures import speech_with_pauses
from clientkit import server_process
from services import haproxy, postgres
from wsclient import stream

SPEECH = [0.3, "One stream of many through the balancer.", 0.8, "It keeps going for a while.", 0.8,
          "And then a third sentence follows.", 0.8, "Finally the fourth one ends it.", 0.6]


def _replica(db: str) -> tuple[subprocess.Popen, int]:
    return server_process("--db", db, "--drain-timeout", "20")


def test_eight_streams_over_two_replicas_lose_no_final_when_one_drains(tmp_path):
    audio, truth = speech_with_pauses(SPEECH)
    with postgres() as db:
        (a, port_a), (b, port_b) = _replica(db), _replica(db)
        procs = [a, b]
        try:
            with haproxy([port_a, port_b]) as lb:
                url = f"ws://127.0.0.1:{lb}"

                async def run():
                    queries = [""] * 6 + ["room=allhands&speaker=alice", "room=allhands&speaker=bob"]
                    tasks = [asyncio.create_task(stream(url, audio, query=q, speed=2.0)) for q in queries]
                    await asyncio.sleep(2.0)  # everyone mid-speech
                    a.send_signal(signal.SIGTERM)
                    return await asyncio.gather(*tasks)

                logs = asyncio.run(run())
                assert a.wait(30) == 0
                drained = [log for log in logs if log.of("closed")[0].reason == "shutdown"]
                room_transcript_b = httpx.get(f"http://127.0.0.1:{port_b}/v1/rooms/allhands/transcript").json()
            a2, port_a2 = _replica(db)  # the drained replica back, on the same store
            procs.append(a2)
            room_transcript_a = httpx.get(f"http://127.0.0.1:{port_a2}/v1/rooms/allhands/transcript").json()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
    assert len(logs) == 8 and drained, "replica a had sessions and drained them"
    for log in logs:
        started = [m.segment for m in log.of("speech_started")]
        assert started and [f.segment for f in log.of("final")] == started  # exactly one final each, in order
        assert log.close_code == 1000 and len(log.of("closed")) == 1
    complete = [log for log in logs if log not in drained]
    assert all(len(log.of("final")) == len(truth) for log in complete)
    assert room_transcript_a == room_transcript_b
    spoken = sorted(f.text for log in logs[6:] for f in log.of("final") if f.text)
    assert sorted(f["text"] for f in room_transcript_b["finals"]) == spoken
