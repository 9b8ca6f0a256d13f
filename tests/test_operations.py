"""Running dgasr unattended: /metrics that agree with what was sent, tokens, origins, TLS, logs.

A real server on a real port (tiny-random engine) and real clients: websockets, httpx,
the official OpenAI and Deepgram SDKs (authenticating with their own api-key settings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import subprocess
import threading
import time

import httpx
import openai
import pytest
import soundfile as sf
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread, server_process
from deepgram import DeepgramClient, DeepgramClientEnvironment
from deepgram.core.events import EventType
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wsclient import encode, stream

from server.cli.server import JsonFormatter
from server.service.config import ServerConfig
from server.wire.v1 import parse_server_message

SENTENCES = [0.4, "Hello there, how are you today?", 1.0, "Please call me back tomorrow.", 0.9]
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def speech():
    return speech_with_pauses(SENTENCES)


def _metrics(port: int, **kw) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by (name, sorted labels); parsed by prometheus_client's own parser."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", **kw)
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.text) for s in family.samples}


def _v1(name: str, samples: dict, **labels) -> float:
    return samples.get((name, tuple(sorted({"protocol": "v1", **labels}.items()))), 0.0)


def test_metrics_count_exactly_what_one_session_of_two_sentences_was_sent(tiny_engine, speech):
    audio, truth = speech
    srv = ServerThread(tiny_engine)
    try:
        before = _metrics(srv.port)
        log = asyncio.run(stream(srv.url, audio))
        after = _metrics(srv.port)
    finally:
        srv.close()
    finals, partials = log.of("final"), log.of("partial")
    assert len(finals) == len(truth) == 2

    def rise(name: str, **labels) -> float:
        return _v1(name, after, **labels) - _v1(name, before, **labels)

    assert rise("dgasr_finals_total") == 2
    assert rise("dgasr_final_latency_seconds_count") == 2
    assert rise("dgasr_final_latency_seconds_sum") == pytest.approx(sum(f.latency_ms for f in finals) / 1000,
                                                                    abs=0.01)
    assert rise("dgasr_partials_total") - rise("dgasr_partials_dropped_total") == len(partials)
    assert rise("dgasr_first_partial_latency_seconds_count") == len({p.segment for p in partials})
    assert rise("dgasr_sessions_total") == 1 and _v1("dgasr_sessions_active", after) == 0
    assert rise("dgasr_audio_seconds_total") == pytest.approx(len(audio) / 16000, abs=0.01)
    batches = after[("dgasr_batch_size_count", ())] - before.get(("dgasr_batch_size_count", ()), 0)
    waits = after[("dgasr_queue_wait_seconds_count", ())] - before.get(("dgasr_queue_wait_seconds_count", ()), 0)
    assert batches >= 1 and waits == after[("dgasr_batch_size_sum", ())] - before.get(("dgasr_batch_size_sum", ()), 0)
    assert 0 < after[("dgasr_engine_busy_ratio", ())] <= 1
    assert after[("process_resident_memory_bytes", ())] > 10e6


def test_a_token_is_required_everywhere_but_the_health_checks(tiny_engine, speech, tmp_path):
    audio, _ = speech
    srv = ServerThread(tiny_engine, auth_token=TOKEN)
    listen = f"{srv.url}/v1/listen?sample_rate=16000"

    async def status(url: str, headers: dict | None = None) -> int | str:
        try:
            async with connect(url, additional_headers=headers) as ws:
                return json.loads(await ws.recv())["type"]
        except InvalidStatus as exc:
            return exc.response.status_code

    try:
        assert asyncio.run(status(listen)) == 401
        assert asyncio.run(status(listen, {"Authorization": "Bearer wrong-token-for-tests"})) == 401
        assert asyncio.run(status(listen + "&token=wrong")) == 401
        assert asyncio.run(status(listen, {"Authorization": f"Bearer {TOKEN}"})) == "ready"
        assert asyncio.run(status(listen, {"Authorization": f"Token {TOKEN}"})) == "ready"
        assert asyncio.run(status(listen + f"&token={TOKEN}")) == "ready"  # browsers
        base = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200 and httpx.get(f"{base}/readyz").status_code == 200
        refused = httpx.get(f"{base}/metrics")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in refused.text
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", b"x")}).status_code == 401

        path = tmp_path / "two.wav"
        sf.write(path, audio, 16000)
        with pytest.raises(openai.AuthenticationError):
            OpenAI(api_key="wrong", base_url=f"{base}/v1", max_retries=0).audio.transcriptions.create(
                file=path.open("rb"), model="x")
        text = OpenAI(api_key=TOKEN, base_url=f"{base}/v1").audio.transcriptions.create(
            file=path.open("rb"), model="x").text
        assert text

        dg = f"127.0.0.1:{srv.port}/deepgram"  # Deepgram's SDK sends "Authorization: Token <api_key>"
        env = DeepgramClientEnvironment(base=f"http://{dg}", production=f"ws://{dg}", agent=f"ws://{dg}",
                                        agent_rest=f"http://{dg}")
        got: list = []
        with DeepgramClient(api_key=TOKEN, environment=env).listen.v1.connect(
                model="nova-3", encoding="linear16", sample_rate=16000) as conn:
            conn.on(EventType.MESSAGE, got.append)
            listener = threading.Thread(target=conn.start_listening, daemon=True)
            listener.start()
            conn.send_media(encode(audio))
            conn.send_close_stream()
            listener.join(30)
        assert [m.type for m in got if m is not None][-1] == "Metadata"
        assert sum(1 for m in got if m is not None and m.type == "Results" and m.is_final) == 2
    finally:
        srv.close()


def test_foreign_origins_get_403_and_versions_and_device_stay_private(tiny_engine):
    srv = ServerThread(tiny_engine, allowed_origins=("https://captions.example",))
    listen = f"{srv.url}/v1/listen"

    async def handshake(origin: str | None):
        try:
            async with connect(listen, origin=origin) as ws:
                await ws.recv()
                return ws.response.status_code, ws.response.headers.get("Server")
        except InvalidStatus as exc:
            return exc.response.status_code, exc.response.headers.get("Server")

    try:
        assert asyncio.run(handshake("https://evil.example"))[0] == 403
        assert asyncio.run(handshake("https://captions.example")) == (101, "dgasr")
        assert asyncio.run(handshake(None)) == (101, "dgasr")  # not a browser: no Origin
        models = httpx.get(f"http://127.0.0.1:{srv.port}/v1/models")
        assert "device" not in models.json()["models"][0] and models.headers["server"] == "dgasr"
        upload = httpx.get(f"http://127.0.0.1:{srv.port}/nothing-here", headers={"Connection": "close"})
        assert "Python" not in upload.headers.get("server", "")
    finally:
        srv.close()
    detailed = ServerThread(tiny_engine, server_details=True)
    try:
        models = httpx.get(f"http://127.0.0.1:{detailed.port}/v1/models")
        assert models.json()["models"][0]["device"] == "cpu" and "websockets/" in models.headers["server"]
    finally:
        detailed.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made here with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_serves_wss_and_https_on_one_port(tiny_engine, speech, certificate, tmp_path):
    audio, truth = speech
    cert, key = certificate
    srv = ServerThread(tiny_engine, tls_cert=str(cert), tls_key=str(key))
    trust = ssl.create_default_context(cafile=str(cert))

    async def session():
        async with connect(f"wss://127.0.0.1:{srv.port}/v1/listen?sample_rate=16000", ssl=trust) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(encode(audio))
            await ws.send(json.dumps({"type": "eos"}))
            return [json.loads(m) async for m in ws]

    try:
        messages = asyncio.run(session())
        assert [m["type"] for m in messages].count("final") == len(truth) and messages[-1]["type"] == "closed"
        path = tmp_path / "two.wav"
        sf.write(path, audio, 16000)
        client = OpenAI(api_key="x", base_url=f"https://127.0.0.1:{srv.port}/v1", http_client=httpx.Client(verify=trust))
        assert client.audio.transcriptions.create(file=path.open("rb"), model="x").text
        assert httpx.get(f"https://127.0.0.1:{srv.port}/healthz", verify=trust).text == "ok\n"
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port is not answered
            httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=3)
    finally:
        srv.close()


def test_logs_hold_no_transcripts_unless_asked_and_json_logs_are_one_object_per_line(tiny_engine, speech, caplog):
    audio, _ = speech
    with caplog.at_level(logging.INFO):
        srv = ServerThread(tiny_engine)
        try:
            quiet = [m.text for m in asyncio.run(stream(srv.url, audio)).of("final")]
        finally:
            srv.close()
        assert quiet and not any(text in caplog.text for text in quiet)
        assert "session" in caplog.text and "close:" in caplog.text  # one line per session with its stats
        caplog.clear()
        srv = ServerThread(tiny_engine, log_transcripts=True)
        try:
            told = [m.text for m in asyncio.run(stream(srv.url, audio)).of("final")]
        finally:
            srv.close()
        assert all(text in caplog.text for text in told)
    record = logging.LogRecord("dgasr.server", logging.INFO, __file__, 1, "session %s close: %s", ("ab", "x"), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["message"] == "session ab close: x"
    assert json.loads(line)["level"] == "INFO" and json.loads(line)["logger"] == "dgasr.server"
    assert TOKEN not in repr(ServerConfig(auth_token=TOKEN))  # a logged config never shows the token


def test_sigterm_with_three_sessions_mid_speech_drains_them_all_and_exits_zero(speech):
    """/readyz turns 503 at once, a new handshake gets 503, every open segment gets its final, exit 0."""
    audio, _ = speech
    proc, port = server_process("--drain-timeout", "20")
    try:
        base = f"http://127.0.0.1:{port}"

        async def speaker(started: asyncio.Event) -> list:
            async with connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
                await ws.recv()
                got = []
                for i in range(0, len(audio), 1600):  # real time, until the server hears speech
                    await ws.send(encode(audio[i : i + 1600]))
                    await asyncio.sleep(0.1)
                    while True:
                        try:
                            got.append(parse_server_message(await asyncio.wait_for(ws.recv(), 0.001)))
                        except TimeoutError:
                            break
                    if any(m.type == "speech_started" for m in got):
                        break
                started.set()  # mid-sentence: speech started, the segment is open
                got += [parse_server_message(m) async for m in ws]
                return got

        async def scenario():
            flags = [asyncio.Event() for _ in range(3)]
            sessions = [asyncio.create_task(speaker(f)) for f in flags]
            await asyncio.gather(*(f.wait() for f in flags))
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient() as client:
                while (await client.get(f"{base}/readyz")).status_code != 503:
                    await asyncio.sleep(0.01)
                not_ready_after = time.monotonic() - signalled
            try:
                async with connect(f"ws://127.0.0.1:{port}/v1/listen"):
                    late = 101
            except InvalidStatus as exc:
                late = exc.response.status_code
            return await asyncio.gather(*sessions), not_ready_after, late

        logs, not_ready_after, late = asyncio.run(scenario())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not_ready_after < 0.5 and late == 503
    for messages in logs:
        types = [m.type for m in messages if m.type != "partial"]
        assert types[0] == "speech_started" and types[-3:] == ["speech_stopped", "final", "closed"], types
        assert types.count("final") == types.count("speech_started") and messages[-1].reason == "shutdown"
