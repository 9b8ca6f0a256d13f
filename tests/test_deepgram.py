"""Deepgram live at /deepgram/v1/listen, driven by the official deepgram-sdk, unmodified.

The server is the real one (tiny-random engine: real segmentation, deterministic noise
for text, each segment's final seeded by its index), so the Deepgram finals must equal
the native protocol's finals for the same audio and settings, word for word. Every
message is also validated against the SDK's own pydantic model (the SDK itself falls
back to unchecked parsing and would not say).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from audio_fixtures import speech_with_pauses
from clientkit import ServerThread
from deepgram import AsyncDeepgramClient, DeepgramClient, DeepgramClientEnvironment
from deepgram.core.events import EventType
from deepgram.listen.v1.types import (
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from wsclient import encode, stream

from server.core import events as ev
from server.wire import deepgram as dg

SENTENCES = [0.4, "Hello there, how are you today?", 1.0, "Please call me back tomorrow.", 0.9]
MODELS = {"Results": ListenV1Results, "SpeechStarted": ListenV1SpeechStarted, "UtteranceEnd": ListenV1UtteranceEnd,
          "Metadata": ListenV1Metadata, "Error": ListenV1Error}
QUERY = dict(model="nova-3", encoding="linear16", sample_rate=16000, channels=1, language="en-US",
             interim_results="true", utterance_end_ms=1000, vad_events="true", punctuate="true")


@pytest.fixture(scope="module")
def speech():
    return speech_with_pauses(SENTENCES)


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


def _environment(port: int) -> DeepgramClientEnvironment:
    base = f"127.0.0.1:{port}/deepgram"
    return DeepgramClientEnvironment(base=f"http://{base}", production=f"ws://{base}", agent=f"ws://{base}",
                                     agent_rest=f"http://{base}")


def _validated(messages: list) -> list:
    """Each message the SDK parsed, validated again strictly by its own model.

    The SDK falls back to an unchecked parse (missing fields become None); a strict
    validation of what it built fails on any required field the server left out.
    """
    return [MODELS[m.type].model_validate(m.model_dump(exclude_unset=True)) for m in messages if m is not None]


def _native_finals(server: ServerThread, audio) -> list[str]:
    log = asyncio.run(stream(server.url, audio, query="language=en"))
    return [m.text for m in log.of("final")]


def test_the_sync_deepgram_sdk_gets_one_final_per_sentence_equal_to_the_native_finals(server, speech):
    audio, truth = speech
    pcm = encode(audio)
    client = DeepgramClient(api_key="anything", environment=_environment(server.port))
    typed: list = []
    with client.listen.v1.connect(**QUERY) as conn:
        conn.on(EventType.MESSAGE, typed.append)
        listener = threading.Thread(target=conn.start_listening, daemon=True)
        listener.start()
        for i in range(0, len(pcm), 6400):
            conn.send_media(pcm[i : i + 6400])
            time.sleep(0.05)
        conn.send_close_stream()
        listener.join(30)
    messages = _validated(typed)
    kinds = [m.type for m in messages]
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    assert kinds[-1] == "Metadata" and kinds.count("Metadata") == 1
    assert len(finals) == len(truth) == 2 and kinds.count("SpeechStarted") == 2
    assert kinds.count("UtteranceEnd") == sum(1 for f in finals if f.channel.alternatives[0].transcript)
    for final, (start, end) in zip(finals, truth):
        assert final.speech_final and not final.from_finalize
        assert abs(final.start - start) < 0.45 and abs(final.start + final.duration - end) < 0.8
    assert finals[0].start + finals[0].duration <= finals[1].start  # finals never overlap
    interims = [m for m in messages if m.type == "Results" and not m.is_final]
    assert all(i.start >= finals[0].start for i in interims)
    assert [f.channel.alternatives[0].transcript for f in finals] == _native_finals(server, audio)
    assert None not in typed  # no message the SDK did not know


def test_the_async_deepgram_sdk_finalize_gives_a_final_from_finalize_and_keeps_the_session(server, speech):
    audio, truth = speech
    cut = int((truth[0][0] + 0.8) * 16000)  # inside the first sentence
    pcm = encode(audio)

    async def scenario():
        client = AsyncDeepgramClient(api_key="anything", environment=_environment(server.port))
        got = []
        async with client.listen.v1.connect(**QUERY) as conn:
            async def read():
                async for message in conn:
                    got.append(message)

            reader = asyncio.create_task(read())
            await conn.send_media(pcm[: cut * 2])
            await asyncio.sleep(0.3)
            await conn.send_finalize()
            await conn.send_keep_alive()
            await conn._websocket.send(json.dumps({"type": "Flush"}))  # a mistake: an Error, the session goes on
            await conn.send_media(pcm[cut * 2 :])
            await conn.send_close_stream()
            await asyncio.wait_for(reader, 30)
        return got

    got = asyncio.run(scenario())
    assert None not in got
    got = _validated(got)
    finals = [m for m in got if m.type == "Results" and m.is_final]
    errors = [m for m in got if m.type == "Error"]
    assert finals[0].from_finalize and not finals[0].speech_final
    assert finals[0].start + finals[0].duration <= cut / 16000 + 0.05
    assert len(finals) == 3 and all(not f.from_finalize for f in finals[1:])
    assert len(errors) == 1 and errors[0].variant == "bad_message" and "Flush" in errors[0].description
    assert got[-1].type == "Metadata"


def test_deepgram_parameters_dgasr_cannot_honour_are_a_400_naming_them(server):
    import urllib.error
    import urllib.request

    bad = {"encoding=mulaw": "encoding", "channels=2": "channels", "language=xx": "language",
           "sample_rate=1000": "sample_rate", "interim_results=maybe": "interim_results"}
    for query, name in bad.items():
        url = f"http://127.0.0.1:{server.port}{dg.PATH}?model=nova-3&{query}"
        try:
            urllib.request.urlopen(url, timeout=5)
            status, body = 200, {}
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        assert status == 400 and body["err_msg"].startswith(f"{name}:"), (query, body)


def test_deepgram_endpointing_false_keeps_both_sentences_in_one_final_until_close_stream(server, speech):
    """endpointing=false: the pause between the sentences ends nothing; CloseStream gives the one final."""
    audio, truth = speech
    pcm = encode(audio)

    async def scenario():
        client = AsyncDeepgramClient(api_key="anything", environment=_environment(server.port))
        async with client.listen.v1.connect(**{**QUERY, "endpointing": "false"}) as conn:
            await conn.send_media(pcm)
            await conn.send_close_stream()
            return [m async for m in conn]

    got = asyncio.run(scenario())
    assert None not in got
    finals = [m for m in _validated(got) if m.type == "Results" and m.is_final]
    assert len(finals) == 1
    assert abs(finals[0].start - truth[0][0]) < 0.45 and finals[0].start + finals[0].duration > truth[1][1] - 0.3


def test_deepgram_multi_results_name_the_language_heard_and_hinted_results_leave_it_out():
    """With ``language=multi`` a final's alternative carries ``languages`` (the language the
    model heard, as Deepgram's multilingual results do); with a language given, or on an empty
    final, the field is left out. The SDK's own model reads both."""
    heard = ev.Final(0, "bonjour à tous", 0.5, 1.9, 1, "fr", 120.0)
    for query, languages in (({"language": "multi"}, ["fr"]), ({"language": "en"}, None)):
        codec = dg.DeepgramCodec(dg.DeepgramParams.from_query(query))
        (frame,) = codec.encode(heard)
        alternative = json.loads(frame)["channel"]["alternatives"][0]
        assert alternative.get("languages") == languages and ("languages" in alternative) == (languages is not None)
        assert ListenV1Results.model_validate_json(frame).channel.alternatives[0].languages == languages
    codec = dg.DeepgramCodec(dg.DeepgramParams.from_query({"language": "multi"}))
    assert "languages" not in codec.encode(ev.Final(1, "", 2.0, 2.5, 1, "fr", 90.0))[0]
