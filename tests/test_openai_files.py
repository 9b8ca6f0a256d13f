"""POST /v1/audio/transcriptions, driven by the official openai SDK, unmodified, against a real server.

The engine is tiny-random (real segmentation; deterministic noise for text, each
segment's final seeded by its index), so the same file must give exactly the same text
through the endpoint, through ``dgasr-transcribe`` and through a native live stream, in
every response format, and the SRT/VTT cues must sit on the spoken sentences.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread
from openai import OpenAI
from openai.types.audio import Transcription, TranscriptionVerbose
from wsclient import stream

from server.cli.transcribe import main as transcribe_main
from server.cli.transcribe import read_audio
from server.service.config import ServerConfig, session_config
from server.service.files import file_session, transcribe_offline

SENTENCES = [0.4, "Hello there, how are you today?", 1.0, "Please call me back tomorrow.", 0.9,
             "The meeting starts at nine.", 0.6]


@pytest.fixture(scope="module")
def speech():
    return speech_with_pauses(SENTENCES)


@pytest.fixture(scope="module")
def wav(speech, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("files") / "three.wav"
    sf.write(path, speech[0], 16000)
    return path.read_bytes()


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


def _client(server: ServerThread) -> OpenAI:
    return OpenAI(api_key="anything", base_url=f"http://127.0.0.1:{server.port}/v1", max_retries=0)


def _cli_line(tmp_path, wav: bytes, *options: str) -> str:
    path = tmp_path / "three.wav"
    path.write_bytes(wav)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert transcribe_main(["--model", "tiny-random", *options, str(path)]) == 0
    return out.getvalue().rstrip("\n")


def _within(spans: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float = 0.5) -> None:
    assert len(spans) == len(truth)
    for (start, end), (t0, t1) in zip(spans, truth):
        assert t0 - tol <= start <= t0 + tol and t1 - tol <= end <= t1 + tol, (start, end, t0, t1)


def test_every_response_format_carries_the_same_text_as_dgasr_transcribe_and_the_live_stream(
        server, speech, wav, tmp_path):
    audio, truth = speech
    client = _client(server)
    line = _cli_line(tmp_path, wav)
    live = [m.text for m in asyncio.run(stream(server.url, audio)).of("final")]
    assert line and line == " ".join(t for t in live if t)

    def create(fmt: str, **kw):
        return client.audio.transcriptions.create(file=("three.wav", wav), model="whisper-1", response_format=fmt, **kw)

    raw = client.audio.transcriptions.with_raw_response.create(file=("three.wav", wav), model="whisper-1")
    parsed = Transcription.model_validate(json.loads(raw.http_response.text), strict=True)
    assert parsed.text == line and parsed.usage.seconds == pytest.approx(len(audio) / 16000, abs=0.01)
    assert create("json").text == line
    assert create("text") == line + "\n"

    cues = list(srt.parse(create("srt")))
    assert [c.index for c in cues] == [1, 2, 3] and " ".join(c.content for c in cues) == line
    _within([(c.start.total_seconds(), c.end.total_seconds()) for c in cues], truth)

    vtt = webvtt.from_string(create("vtt"))
    assert " ".join(c.text for c in vtt.captions) == line
    _within([(c.start_time.in_seconds() + c.start_time.milliseconds / 1000,
              c.end_time.in_seconds() + c.end_time.milliseconds / 1000) for c in vtt.captions], truth)

    body = client.audio.transcriptions.with_raw_response.create(
        file=("three.wav", wav), model="whisper-1", response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en").http_response.text
    verbose = TranscriptionVerbose.model_validate(json.loads(body), strict=True)
    hinted = _cli_line(tmp_path, wav, "--language", "en")
    assert hinted != line  # the hint reaches the model
    assert verbose.text == hinted and verbose.language == "english"
    assert [s.id for s in verbose.segments] == [0, 1, 2] and " ".join(s.text for s in verbose.segments) == hinted
    _within([(s.start, s.end) for s in verbose.segments], truth)
    # words: each final's own word timings (tiny-random's noise text is too long to align to its few
    # audio slots, so here they are the live finals' words, possibly none; test_wire_openai_audio
    # pins the mapping of real ones)
    live_en = asyncio.run(stream(server.url, audio, query="language=en")).of("final")
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w.word, w.start, w.end) for f in live_en for w in (f.words or [])]

    words_only = create("verbose_json", timestamp_granularities=["word"])
    assert words_only.segments is None and words_only.words is not None


def test_a_streamed_transcription_sends_one_delta_per_segment_then_the_whole_text(server, wav, tmp_path):
    events = list(_client(server).audio.transcriptions.create(file=("three.wav", wav), model="x", stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    line = _cli_line(tmp_path, wav)
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == line


def test_bad_requests_get_one_line_openai_errors_and_the_server_goes_on(server, wav):
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as bad_audio:
        client.audio.transcriptions.create(file=("notes.wav", b"this is not audio at all"), model="x")
    assert bad_audio.value.body["param"] == "file" and "cannot read notes.wav" in bad_audio.value.body["message"]
    assert "\n" not in bad_audio.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(file=("a.wav", wav), model="x", response_format="diarized_json")
    assert bad_format.value.body["param"] == "response_format" and "verbose_json" in bad_format.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad_language:
        client.audio.transcriptions.create(file=("a.wav", wav), model="x", language="pt")
    assert bad_language.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as words_as_text:
        client.audio.transcriptions.create(file=("a.wav", wav), model="x", response_format="text",
                                           timestamp_granularities=["word"])
    assert words_as_text.value.body["param"] == "timestamp_granularities[]"

    base = f"http://127.0.0.1:{server.port}/v1/audio/transcriptions"
    no_file = httpx.post(base, data={"model": "x"}, files={"other": ("a.txt", b"x")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_multipart = httpx.post(base, json={"model": "x"})
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["error"]["message"]
    as_get = httpx.get(base)
    assert as_get.status_code == 405 and as_get.headers["allow"] == "POST"
    elsewhere = httpx.post(f"http://127.0.0.1:{server.port}/v1/listen", content=b"x")
    assert elsewhere.status_code == 404
    assert client.audio.transcriptions.create(file=("a.wav", wav), model="x").text  # and it still works
    client.close()  # its pooled connection goes; the server's count of it follows on the server's own loop
    admission = server.server.admission
    for _ in range(400):  # (CI once read the count a moment before the server had released it)
        if admission.sessions == 0 and admission.pending == 0 and admission.connections_from("127.0.0.1") == 0:
            break
        time.sleep(0.01)
    assert admission.sessions == 0 and admission.pending == 0 and admission.connections_from("127.0.0.1") == 0
    assert server.server.registry.empty


def test_an_upload_over_the_limit_is_refused_413_before_it_is_read(tiny_engine, wav):
    srv = ServerThread(tiny_engine, max_upload_bytes=len(wav) // 2)
    try:
        with pytest.raises(openai.APIStatusError) as too_big:
            _client(srv).audio.transcriptions.create(file=("three.wav", wav), model="x")
        assert too_big.value.status_code == 413 and "limit" in too_big.value.body["message"]
        # a client declaring a small body and sending more is cut off at the limit too
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(len(wav) // len(chunk) + 3):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        reply = sock.recv(4096)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 413")
    finally:
        srv.close()


def test_a_shutdown_during_a_file_transcription_still_answers_it_in_full(tiny_engine, tmp_path):
    """Nine sentences (23 s, the tiny model's window is 8 s): nine segments; a shutdown while they are
    being transcribed still answers with all of them, exactly as ``dgasr-transcribe`` reads the file."""
    audio, truth = speech_with_pauses(SENTENCES * 3)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    path = tmp_path / "long.flac"
    path.write_bytes(buf.getvalue())
    model = tiny_engine.wait_ready()
    offline = transcribe_offline(tiny_engine, [(file_session(session_config(ServerConfig(), model.spec), None),
                                                read_audio(str(path)))])[0]
    assert len(offline.finals) == len(truth) == 9
    srv = ServerThread(tiny_engine)
    answer: dict = {}

    def post() -> None:
        answer["result"] = _client(srv).audio.transcriptions.create(
            file=("long.flac", buf.getvalue()), model="x", response_format="verbose_json")

    worker = threading.Thread(target=post)
    worker.start()
    for _ in range(400):  # the file's session is registered: the upload is in
        if not srv.server.registry.empty:
            break
        threading.Event().wait(0.025)
    assert not srv.server.registry.empty
    srv.close()  # shutdown: the file's session ends like a live one, every final delivered
    worker.join(60)
    segments = answer["result"].segments
    assert [(s.start, s.end, s.text) for s in segments] == [(f.start, f.end, f.text) for f in offline.finals if f.text]
    assert np.all(np.diff([s.start for s in segments]) > 0)


def test_a_client_that_hangs_up_before_the_answer_stops_its_transcription(tiny_engine):
    """A long upload whose client disconnects: its session ends at once, slot and queue freed."""
    import socket
    import time

    audio, _ = speech_with_pauses(SENTENCES * 4)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    request = httpx.Request("POST", "http://x/v1/audio/transcriptions", data={"model": "x"},
                            files={"file": ("long.wav", buf.getvalue())})
    head = b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in request.headers.items() if k.lower() != "host") + b"\r\n"
    srv = ServerThread(tiny_engine)
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(head + request.read())
        for _ in range(400):
            if not srv.server.registry.empty:
                break
            time.sleep(0.01)
        assert not srv.server.registry.empty  # transcribing
        sock.close()
        for _ in range(400):
            if srv.server.registry.empty and srv.server.admission.sessions == 0:
                break
            time.sleep(0.01)
        assert srv.server.registry.empty and srv.server.admission.sessions == 0
        assert srv.server.admission.connections_from("127.0.0.1") == 0
        assert len(srv.server.scheduler) == 0  # its queued finals were dropped with it
        made = srv.server.metrics.finals.labels("openai_files")._value.get()
        assert made < 12  # 12 sentences: it stopped early, not after transcribing them all
    finally:
        srv.close()
