"""A real dgasr server on a free port (tiny-random engine), real websocket clients, real speech."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soxr
from audio_fixtures import speech_with_pauses
from clientkit import server_process
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import assert_protocol_order, encode, running_server, stream

from server.wire.v1 import parse_server_message

SENTENCES = ["Hello there, how are you today?", 1.2, "The quick brown fox jumps over the lazy dog.", 1.2,
             "Please call me back tomorrow morning."]


@pytest.fixture(scope="module")
def speech():
    audio, truth = speech_with_pauses(SENTENCES)
    return np.concatenate([audio, np.zeros(16000, np.float32)]), truth


def _run(coro):
    return asyncio.run(coro)


def _near(found: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float = 0.45) -> None:
    assert len(found) == len(truth), (found, truth)
    for (s, e), (ts, te) in zip(found, truth):
        assert abs(s - ts) <= tol and abs(e - te) <= tol, (found, truth)


def test_server_sends_full_ordered_event_sequence_for_multisentence_stream(tiny_engine, speech):
    """Three sentences paced at 4x real time: every protocol guarantee holds, partials included."""
    audio, truth = speech

    async def scenario():
        async with running_server(tiny_engine, partial_interval_ms=300) as srv:
            return await stream(f"ws://127.0.0.1:{srv.port}", audio, speed=4.0)

    log = _run(scenario())
    assert_protocol_order(log)
    ready = log.messages[0]
    assert (ready.model, ready.sample_rate, ready.encoding, ready.protocol) == ("tiny-random", 16000, "pcm_s16le", 1)
    assert (ready.draft_steps, ready.final_steps) == (3, 16)
    _near([(f.start, f.end) for f in log.of("final")], truth)
    assert len(log.of("partial")) >= 3  # drafts while speaking
    assert all(p.steps == 3 for p in log.of("partial")) and all(f.steps == 16 for f in log.of("final"))
    closed = log.messages[-1]
    assert closed.reason == "eos" and closed.segments == 3
    assert abs(closed.audio_seconds - len(audio) / 16000) < 0.01


def test_server_finalize_closes_the_open_segment_before_eos(tiny_engine, speech):
    """finalize mid-speech yields speech_stopped and the final at once; eos then closes."""
    audio, _ = speech
    head = audio[: int(1.2 * 16000)]  # inside the first sentence

    async def scenario():
        async with running_server(tiny_engine) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen") as ws:
                await ws.send(encode(head))
                await ws.send(json.dumps({"type": "finalize"}))
                got = []
                while not got or got[-1].type != "final":
                    got.append(parse_server_message(await ws.recv()))
                await ws.send(json.dumps({"type": "eos"}))
                rest = [parse_server_message(m) async for m in ws]
                return got, rest

    got, rest = _run(scenario())
    assert [m.type for m in got] == ["ready", "speech_started", "speech_stopped", "final"]
    assert abs(got[-1].end - 1.2) < 0.05  # ends where the client's audio ended
    assert [m.type for m in rest] == ["closed"] and rest[0].segments == 1


def test_server_eos_flushes_speech_that_never_reached_silence(tiny_engine, speech):
    """Audio cut mid-sentence then eos: the open segment still gets its final before closed."""
    audio, _ = speech

    async def scenario():
        async with running_server(tiny_engine) as srv:
            return await stream(f"ws://127.0.0.1:{srv.port}", audio[: int(4.0 * 16000)])

    log = _run(scenario())
    assert_protocol_order(log)
    assert len(log.of("final")) == 2 and abs(log.of("final")[-1].end - 4.0) < 0.05


def test_server_keeps_eight_concurrent_sessions_apart(tiny_engine):
    """8 simultaneous clients with different speech each get exactly their own segments."""
    layouts = [[f"Sentence number {i} for client {k}." if i % 2 == 0 else 0.8 + 0.1 * k for i in range(2 * n - 1)]
               for k, n in enumerate([1, 2, 3, 1, 2, 3, 2, 1])]
    inputs = [speech_with_pauses(layout) for layout in layouts]

    async def scenario():
        async with running_server(tiny_engine, max_batch=8) as srv:
            url = f"ws://127.0.0.1:{srv.port}"
            return await asyncio.gather(*(stream(url, np.concatenate([a, np.zeros(12000, np.float32)]), speed=6.0)
                                          for a, _ in inputs)), srv.loop.stats

    logs, stats = _run(scenario())
    for log, (_, truth) in zip(logs, inputs):
        assert_protocol_order(log)
        _near([(f.start, f.end) for f in log.of("final")], truth)
    assert len({log.messages[0].session_id for log in logs}) == 8
    assert max(stats.batch_sizes) > 1  # work from different sessions really shared batches


@pytest.mark.parametrize("rate", [48000, 8000])
def test_server_resamples_other_rates_to_the_same_segments(tiny_engine, speech, rate):
    """48 kHz and 8 kHz input give the same segments as 16 kHz input (within 100 ms)."""
    audio, truth = speech
    resampled = soxr.resample(audio, 16000, rate).astype(np.float32)

    async def scenario():
        async with running_server(tiny_engine) as srv:
            return await stream(f"ws://127.0.0.1:{srv.port}", resampled, rate=rate, chunk_ms=70)

    log = _run(scenario())
    assert_protocol_order(log)
    assert log.messages[0].sample_rate == rate
    _near([(f.start, f.end) for f in log.of("final")], truth)
    assert abs(log.messages[-1].audio_seconds - len(audio) / 16000) < 0.01


def test_server_accepts_float32_input_with_frames_splitting_samples(tiny_engine, speech):
    """pcm_f32le sent in odd-sized frames (samples split across frames) is decoded exactly."""
    audio, truth = speech

    async def scenario():
        async with running_server(tiny_engine) as srv:
            url = f"ws://127.0.0.1:{srv.port}/v1/listen?encoding=pcm_f32le"
            data = encode(audio, "pcm_f32le")
            async with connect(url) as ws:
                for i in range(0, len(data), 4999):
                    await ws.send(data[i : i + 4999])
                await ws.send('{"type": "eos"}')
                return [parse_server_message(m) async for m in ws]

    messages = _run(scenario())
    finals = [m for m in messages if m.type == "final"]
    _near([(f.start, f.end) for f in finals], truth)
    assert messages[0].encoding == "pcm_f32le"


@pytest.mark.parametrize(
    "query, field",
    [("sample_rate=1000", "sample_rate"), ("encoding=mp3", "encoding"), ("language=xx", "language"),
     ("interim_results=maybe", "interim_results"), ("draft_steps=abc", "draft_steps"), ("colour=blue", "colour")],
)
def test_server_refuses_bad_parameters_with_http_400_naming_the_field(tiny_engine, query, field):
    """Bad query parameters never reach a session: HTTP 400 and a JSON body naming the field."""

    async def scenario():
        async with running_server(tiny_engine) as srv:
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen?{query}"):
                    pass
            return info.value.response

    response = _run(scenario())
    assert response.status_code == 400
    body = json.loads(response.body)
    assert body["field"] == field and body["error"] == "bad_request" and body["message"]


def test_server_refuses_when_full_with_503_and_retry_after(tiny_engine):
    """With max_sessions reached, a new client gets HTTP 503 with Retry-After."""

    async def scenario():
        async with running_server(tiny_engine, max_sessions=1) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen") as first:
                await first.recv()
                with pytest.raises(InvalidStatus) as info:
                    async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen"):
                        pass
                await first.send('{"type": "eos"}')
                return info.value.response

    response = _run(scenario())
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert json.loads(response.body)["error"] == "overloaded"


def test_server_reports_bad_messages_and_bad_audio_and_keeps_the_session(tiny_engine, speech):
    """Malformed JSON, unknown types and NaN samples give errors; the session still transcribes."""
    audio, truth = speech

    async def scenario():
        async with running_server(tiny_engine) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen?encoding=pcm_f32le") as ws:
                await ws.send("{not json")
                await ws.send('{"type": "dance"}')
                await ws.send(np.array([0.1, np.nan, 0.2], "<f4").tobytes())
                await ws.send(encode(audio, "pcm_f32le"))
                await ws.send('{"type": "keepalive"}')
                await ws.send('{"type": "eos"}')
                return [parse_server_message(m) async for m in ws]

    messages = _run(scenario())
    errors = [m for m in messages if m.type == "error"]
    assert [e.code for e in errors] == ["bad_message", "bad_message", "bad_audio"]
    assert "not valid JSON" in errors[0].message and "'dance'" in errors[1].message
    assert not any(e.fatal for e in errors)
    assert len([m for m in messages if m.type == "final"]) == len(truth)
    assert messages[-1].type == "closed"


def test_server_closes_oversized_frames_with_the_websocket_size_limit(tiny_engine):
    """A frame above max_frame_bytes closes the connection with code 1009."""

    async def scenario():
        async with running_server(tiny_engine, max_frame_bytes=4096) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen") as ws:
                await ws.recv()
                await ws.send(b"\0" * 10000)
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.recv()
            for _ in range(100):  # the server's handler ends just after the client sees the close
                if not srv.connections:
                    break
                await asyncio.sleep(0.05)
            return ws.close_code, len(srv.connections)

    code, left = _run(scenario())
    assert code == 1009 and left == 0


def test_server_closes_idle_sessions_with_reason_idle(tiny_engine):
    """No audio and no keepalive for idle_timeout: a fatal timeout error, closed with reason idle, code 1000."""

    async def scenario():
        async with running_server(tiny_engine, idle_timeout=0.5) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen") as ws:
                t0 = time.monotonic()
                messages = [parse_server_message(m) async for m in ws]
                return messages, time.monotonic() - t0, ws.close_code

    messages, waited, code = _run(scenario())
    assert [m.type for m in messages] == ["ready", "error", "closed"]
    assert messages[1].code == "timeout" and messages[1].fatal and "0.5 s" in messages[1].message
    assert messages[-1].reason == "idle" and code == 1000 and waited >= 0.5


def test_server_computes_no_drafts_when_interim_results_is_false(tiny_engine, speech):
    """interim_results=false: no partial is sent and the engine runs no draft at all."""
    audio, truth = speech

    async def scenario():
        async with running_server(tiny_engine) as srv:
            log = await stream(f"ws://127.0.0.1:{srv.port}", audio, speed=6.0, query="interim_results=false")
            return log, srv.loop.stats.jobs

    log, jobs = _run(scenario())
    assert_protocol_order(log)
    assert log.of("partial") == [] and jobs == len(truth) == len(log.of("final"))


def test_server_clamps_client_steps_to_its_limits(tiny_engine):
    """Clients may ask for steps; the server clamps them and says so in ready."""

    async def scenario():
        async with running_server(tiny_engine, max_steps=20) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/listen?draft_steps=2&final_steps=500") as ws:
                ready = parse_server_message(await ws.recv())
                await ws.send('{"type": "eos"}')
                return ready

    ready = _run(scenario())
    assert (ready.draft_steps, ready.final_steps) == (2, 20)


def test_server_disconnect_mid_segment_leaves_nothing_behind(tiny_engine, speech):
    """A client that vanishes mid-sentence leaves no connection, job, task or buffer behind."""
    audio, _ = speech

    async def scenario():
        async with running_server(tiny_engine, partial_interval_ms=200) as srv:
            baseline = len(asyncio.all_tasks())
            ws = await connect(f"ws://127.0.0.1:{srv.port}/v1/listen")
            await ws.recv()
            for i in range(0, 24000, 1600):  # 1.5 s of speech, in the middle of a segment
                await ws.send(encode(audio[i : i + 1600]))
                await asyncio.sleep(0.02)
            ws.transport.abort()  # no close handshake: the client just disappears
            for _ in range(200):
                if not srv.connections and len(asyncio.all_tasks()) <= baseline:
                    break
                await asyncio.sleep(0.05)
            after = (len(srv.connections), len(srv.scheduler), len(asyncio.all_tasks()) - baseline)
            second = await stream(f"ws://127.0.0.1:{srv.port}", audio)  # the server still works
            return after, second

    (connections, queued, extra_tasks), second = _run(scenario())
    assert (connections, queued, extra_tasks) == (0, 0, 0)
    assert_protocol_order(second)
    gc.collect()


def test_server_health_ready_and_models_endpoints(tiny_engine):
    """GET /healthz, /readyz and /v1/models answer plain HTTP on the websocket port."""

    async def scenario():
        async with running_server(tiny_engine) as srv:
            base = f"http://127.0.0.1:{srv.port}"

            def fetch(path):
                try:
                    with urllib.request.urlopen(base + path, timeout=10) as r:
                        return r.status, r.read().decode()
                except urllib.error.HTTPError as e:
                    return e.code, e.read().decode()

            return await asyncio.gather(*(asyncio.to_thread(fetch, p) for p in ("/healthz", "/readyz", "/v1/models", "/nope")))

    (h, _), (r, _), (m, body), (n, _) = _run(scenario())
    assert (h, r, m, n) == (200, 200, 200, 404)
    model = json.loads(body)["models"][0]
    assert model["name"] == "tiny-random" and model["window_seconds"] == 8.0
    assert model["languages"] == ["en", "de", "fr", "es", "hi", "zh"] and model["final_steps"] == 16


def test_server_sigterm_finalizes_open_segments_and_exits_zero(speech, tmp_path):
    """SIGTERM mid-sentence: the client still gets speech_stopped, its final and closed; exit 0."""
    audio, _ = speech
    proc, port = server_process()
    try:

        async def scenario():
            async with connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
                await ws.recv()
                await ws.send(encode(audio[: int(1.5 * 16000)]))
                got = []
                while not got or got[-1].type != "speech_started":
                    got.append(parse_server_message(await ws.recv()))
                proc.send_signal(signal.SIGTERM)
                got += [parse_server_message(m) async for m in ws]
                return got, ws.close_code

        messages, code = _run(scenario())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    types = [m.type for m in messages if m.type != "partial"]
    assert types == ["speech_started", "speech_stopped", "final", "closed"], types
    assert messages[-1].reason == "shutdown" and code == 1000


def test_server_splits_speech_longer_than_the_model_window_into_contiguous_segments(tiny_engine):
    """Continuous speech longer than the model's 8 s window is cut into <= 7.5 s segments, none lost."""
    from audio_fixtures import espeak

    text = ("This is one long run of speech without any real pause in it, which keeps going on and on "
            "so that the segment would grow past the window of the model, and the server has to cut it "
            "at a quiet point near the end of what the model can take at once, then carry on.")
    audio = np.concatenate([espeak(text), np.zeros(16000, np.float32)])
    assert len(audio) / 16000 > 15

    async def scenario():
        async with running_server(tiny_engine) as srv:
            return await stream(f"ws://127.0.0.1:{srv.port}", audio)

    log = _run(scenario())
    assert_protocol_order(log)
    finals = log.of("final")
    assert len(finals) >= 3
    assert all(f.end - f.start <= 7.5 + 1e-3 for f in finals), [(f.start, f.end) for f in finals]
    forced = [(a, b) for a, b in zip(finals, finals[1:]) if abs(a.end - b.start) < 1e-3]
    assert len(forced) >= 2  # forced splits: the next segment starts exactly where the last one ended
