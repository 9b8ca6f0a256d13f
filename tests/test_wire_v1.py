"""The v1 codec: text frames to session commands, session events to v1 messages, and ``ready``."""

from __future__ import annotations

import json

import pytest

from server.core import events as ev
from server.core.pcm import Encoding
from server.core.requests import WordTiming
from server.core.session import Session, SessionConfig, StreamFormat
from server.wire import v1


def test_v1_text_frames_decode_to_the_session_commands() -> None:
    assert v1.decode_command('{"type":"finalize"}') == ev.Finalize()
    assert v1.decode_command('{"type": "eos", "extra": 1}') == ev.EndStream("eos")
    assert v1.decode_command('{"type":"keepalive"}') == ev.KeepAlive()


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "not valid JSON"),
    ('{"type":"flush"}', "unknown message type 'flush'"),
    ("[1, 2]", "expected a JSON object"),
    ('{"type": 5}', "unknown message type 5"),
    ('{"kind":"eos"}', "unknown message type None"),
])
def test_v1_malformed_text_frames_raise_bad_message_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(v1.BadMessage, match=reason):
        v1.decode_command(text)


def test_v1_bad_message_quotes_at_most_the_echo_limit_of_a_huge_type() -> None:
    with pytest.raises(v1.BadMessage) as caught:
        v1.decode_command(json.dumps({"type": "x" * 100_000}))
    assert len(str(caught.value)) < 2 * v1.ECHO_LIMIT + 80 and "100002 characters" in str(caught.value)


def test_v1_encodes_each_session_event_as_its_message() -> None:
    cases = [
        (ev.SpeechStarted(0, 0.5), {"type": "speech_started", "segment": 0, "start": 0.5}),
        (ev.Draft(0, "hel", 0.5, 1.2, 2), {"type": "partial", "segment": 0, "text": "hel", "start": 0.5,
                                           "end": 1.2, "steps": 2}),
        (ev.SpeechStopped(0, 1.9), {"type": "speech_stopped", "segment": 0, "end": 1.9}),
        (ev.Final(0, "hello", 0.5, 1.9, 8, "en", 120.0), {"type": "final", "segment": 0, "text": "hello",
                                                           "start": 0.5, "end": 1.9, "steps": 8, "language": "en",
                                                           "latency_ms": 120.0, "words": []}),
        (ev.Final(1, "hi you", 2.0, 2.9, 8, None, 90.0, (WordTiming("hi", 2.1, 2.4, 0.8), WordTiming("you", 2.5, 2.8, 0.7))),
         {"type": "final", "segment": 1, "text": "hi you", "start": 2.0, "end": 2.9, "steps": 8, "language": None,
          "latency_ms": 90.0, "words": [{"word": "hi", "start": 2.1, "end": 2.4, "confidence": 0.8},
                                        {"word": "you", "start": 2.5, "end": 2.8, "confidence": 0.7}]}),
        (ev.Problem(ev.ProblemCode.TIMEOUT, "idle", fatal=True), {"type": "error", "code": "timeout",
                                                                   "message": "idle", "fatal": True}),
        (ev.Ended("eos", 1, 2.5), {"type": "closed", "reason": "eos", "segments": 1, "audio_seconds": 2.5}),
    ]
    for event, wire in cases:
        message = v1.encode_event(event)
        assert json.loads(message.to_json()) == wire
        assert v1.parse_server_message(message.to_json()) == message  # what a client reads back


def test_v1_ready_reports_the_stream_and_the_steps_the_server_settled_on() -> None:
    session = Session("s1", StreamFormat(8000, Encoding.PCM_F32LE, "de", False), SessionConfig("tiny", 2, 16))
    assert v1.ready_message(session) == v1.Ready("s1", "tiny", 8000, "pcm_f32le", "de", 2, 16, interim_results=False)
    params = v1.ListenParams.from_query({"sample_rate": "8000", "encoding": "pcm_f32le", "language": "de",
                                         "interim_results": "false"})
    assert params.stream() == session.stream
