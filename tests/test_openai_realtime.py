"""OpenAI Realtime transcription at /v1/realtime, driven by the official openai SDK (openai[realtime]), unmodified.

The server is the real one (tiny-random engine: real segmentation, deterministic noise
for text, each segment's final seeded by its index), so ``completed.transcript`` must
equal the native protocol's final for the same 24 kHz audio and the same pause length.
The SDK parses events without validating them, so the tests read each raw frame with
the connection's own ``recv_bytes`` and validate it strictly against the SDK's model.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread
from openai import AsyncOpenAI
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from wsclient import encode, stream

from server.core.audio import resample

SENTENCES = [0.4, "Hello there, how are you today?", 1.0, "Please call me back tomorrow.", 0.9]
GA_MODELS = {
    "session.created": ga.SessionCreatedEvent, "session.updated": ga.SessionUpdatedEvent,
    "input_audio_buffer.speech_started": ga.InputAudioBufferSpeechStartedEvent,
    "input_audio_buffer.speech_stopped": ga.InputAudioBufferSpeechStoppedEvent,
    "input_audio_buffer.committed": ga.InputAudioBufferCommittedEvent,
    "input_audio_buffer.cleared": ga.InputAudioBufferClearedEvent,
    "conversation.item.input_audio_transcription.delta": ga.ConversationItemInputAudioTranscriptionDeltaEvent,
    "conversation.item.input_audio_transcription.completed": ga.ConversationItemInputAudioTranscriptionCompletedEvent,
    "error": ga.RealtimeErrorEvent,
}
BETA_MODELS = {
    "transcription_session.updated": beta.TranscriptionSessionUpdatedEvent,
    "input_audio_buffer.speech_started": beta.InputAudioBufferSpeechStartedEvent,
    "input_audio_buffer.speech_stopped": beta.InputAudioBufferSpeechStoppedEvent,
    "input_audio_buffer.committed": beta.InputAudioBufferCommittedEvent,
    "conversation.item.input_audio_transcription.delta": beta.ConversationItemInputAudioTranscriptionDeltaEvent,
    "conversation.item.input_audio_transcription.completed":
        beta.ConversationItemInputAudioTranscriptionCompletedEvent,
}
COMPLETED = "conversation.item.input_audio_transcription.completed"
TURN = {"type": "server_vad", "silence_duration_ms": 600, "prefix_padding_ms": 300}


@pytest.fixture(scope="module")
def speech24():
    audio, truth = speech_with_pauses(SENTENCES)
    return resample(audio, 16000, 24000), truth


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


def _ga(server: ServerThread):
    """A GA transcription session, as OpenAI documents it: no model in the URL."""
    client = AsyncOpenAI(api_key="anything", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    return client.realtime.connect(extra_query={"intent": "transcription"})


def _chunks(pcm: bytes, size: int = 4800) -> list[str]:
    return [base64.b64encode(pcm[i : i + size]).decode() for i in range(0, len(pcm), size)]


async def _read_until(conn, models: dict, done, timeout: float = 30) -> list[dict]:
    """Raw events until ``done(events)``; each validated strictly by its SDK model (where one exists)."""
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        while not done(events):
            raw = json.loads(await conn.recv_bytes())
            if raw["type"] in models:
                models[raw["type"]].model_validate(raw)
            assert conn.parse_event(json.dumps(raw)).type == raw["type"]  # the SDK's own parse agrees
            events.append(raw)
    return events


def _native_finals(server: ServerThread, audio24: np.ndarray) -> list[str]:
    log = asyncio.run(stream(server.url, audio24, rate=24000, query="language=en"))
    return [m.text for m in log.of("final")]


def _check_turns(events: list[dict], truth) -> list[dict]:
    kinds = [e["type"] for e in events]
    completed = [e for e in events if e["type"] == COMPLETED]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(completed) == len(committed) == len(truth) == 2
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    assert committed[0]["previous_item_id"] is None and committed[1]["previous_item_id"] == committed[0]["item_id"]
    for item in (c["item_id"] for c in committed):  # per item: started < stopped < committed < completed
        order = [kinds[i] for i, e in enumerate(events) if e.get("item_id") == item and "delta" not in e["type"]]
        assert order == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed", COMPLETED]
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    for event, (start, _) in zip(started, truth):
        assert abs(event["audio_start_ms"] / 1000 - start) < 0.45
    assert all(c["usage"]["type"] == "duration" and c["usage"]["seconds"] > 0.5 for c in completed)
    return completed


def test_the_ga_sdk_transcribes_one_turn_per_sentence_equal_to_the_native_finals(server, speech24):
    audio, truth = speech24
    pcm = encode(audio)

    async def scenario():
        async with _ga(server) as conn:
            head = await _read_until(conn, GA_MODELS, lambda ev: len(ev) == 1)
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en"}, "turn_detection": TURN}}})
            head += await _read_until(conn, GA_MODELS, lambda ev: len(ev) == 1)
            for chunk in _chunks(pcm):
                await conn.input_audio_buffer.append(audio=chunk)
            await conn.input_audio_buffer.commit(event_id="evt_commit")
            body = await _read_until(conn, GA_MODELS, lambda ev: len([e for e in ev if e["type"] == COMPLETED]) == 2)
            return head, body

    head, body = asyncio.run(scenario())
    assert [e["type"] for e in head] == ["session.created", "session.updated"]
    assert head[1]["session"]["audio"]["input"]["transcription"]["language"] == "en"
    completed = _check_turns(body, truth)
    assert [c["transcript"] for c in completed] == _native_finals(server, audio)
    errors = [e for e in body if e["type"] == "error"]
    # The commit came after the last pause had already ended the turn: nothing to commit.
    assert [e["error"]["event_id"] for e in errors] in ([], ["evt_commit"])


def test_the_legacy_beta_sdk_gets_transcription_session_events_and_the_same_transcripts(server, speech24):
    audio, truth = speech24
    pcm = encode(audio)

    async def scenario():
        client = AsyncOpenAI(api_key="anything", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        async with client.beta.realtime.connect(model="gpt-4o-transcribe",
                                                extra_query={"intent": "transcription"}) as conn:
            await conn.transcription_session.update(session={
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": TURN})
            for chunk in _chunks(pcm):
                await conn.input_audio_buffer.append(audio=chunk)
            return await _read_until(conn, BETA_MODELS, lambda ev: len([e for e in ev if e["type"] == COMPLETED]) == 2)

    events = asyncio.run(scenario())
    assert [e["type"] for e in events[:2]] == ["transcription_session.created", "transcription_session.updated"]
    completed = _check_turns(events[2:], truth)
    assert [c["transcript"] for c in completed] == _native_finals(server, audio)


def test_client_mistakes_get_an_error_naming_the_event_and_the_session_goes_on(server, speech24):
    audio, truth = speech24
    pcm = encode(audio)

    async def scenario():
        async with _ga(server) as conn:
            await conn.send({"type": "input_audio_buffer.append", "audio": "%%% not base64", "event_id": "evt_a"})
            await conn.input_audio_buffer.commit(event_id="evt_b")  # nothing spoken yet
            await conn.send({"type": "response.create", "event_id": "evt_c"})
            await conn.send_raw("{not json")
            await conn.input_audio_buffer.clear(event_id="evt_d")
            for chunk in _chunks(pcm[: int((truth[0][1] + 0.95) * 24000) * 2]):  # the first sentence and its pause
                await conn.input_audio_buffer.append(audio=chunk)
            return await _read_until(conn, GA_MODELS, lambda ev: any(e["type"] == COMPLETED for e in ev))

    events = asyncio.run(scenario())
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [(e["event_id"], e["code"]) for e in errors] == [
        ("evt_a", "invalid_value"), ("evt_b", "input_audio_buffer_commit_empty"), ("evt_c", "invalid_event"),
        (None, "invalid_json")]
    assert errors[0]["param"] == "audio" and "response.create" in errors[2]["message"]
    assert [e["type"] for e in events].count("input_audio_buffer.cleared") == 1
    assert len([e for e in events if e["type"] == COMPLETED]) == 1


def test_manual_commits_with_turn_detection_null_make_one_turn_of_both_sentences(server, speech24):
    audio, truth = speech24
    pcm = encode(audio)

    async def scenario():
        async with _ga(server) as conn:
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "transcription": {"language": "en"}, "turn_detection": None}}})
            for chunk in _chunks(pcm):
                await conn.input_audio_buffer.append(audio=chunk)
            await asyncio.sleep(0.5)
            await conn.input_audio_buffer.commit()
            return await _read_until(conn, GA_MODELS, lambda ev: any(e["type"] == COMPLETED for e in ev))

    events = asyncio.run(scenario())
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds and kinds.count("input_audio_buffer.committed") == 1
    assert events[1]["type"] == "session.updated" and events[1]["session"]["audio"]["input"]["turn_detection"] is None
    assert kinds.count(COMPLETED) == 1 and events[-1]["usage"]["seconds"] > truth[1][1] - truth[0][0] - 0.5
