"""The file transcription codec: form fields in, OpenAI's bodies out (no server; the SDK's models judge)."""

from __future__ import annotations

import json

import pytest
import srt
import webvtt
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
)

from server.core.events import Final
from server.core.requests import WordTiming
from server.wire.openai_audio import (
    ResponseFormat,
    TranscriptionError,
    TranscriptionParams,
    render,
    sse_delta,
    sse_done,
)

FINALS = [
    Final(0, "go forward", 0.31, 1.42, 8, "en", 12.0,
          (WordTiming("go", 0.35, 0.6, 0.9), WordTiming("forward", 0.62, 1.38, 0.7))),
    Final(1, "", 2.0, 2.4, 8, "en", 10.0),  # a cough: no words, no cue, no segment
    Final(2, "ten meters", 3605.5, 3606.75, 8, "en", 9.0,
          (WordTiming("ten", 3605.52, 3605.9, 0.8), WordTiming("meters", 3605.95, 3606.7, 0.6))),
]


def _params(**fields: str | list[str]) -> TranscriptionParams:
    form = {k: v if isinstance(v, list) else [v] for k, v in {"model": "whisper-1", **fields}.items()}
    return TranscriptionParams.from_form(form)


def test_verbose_json_has_a_segment_per_spoken_final_and_every_word_with_its_times():
    params = _params(response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]})
    content_type, body = render(params, FINALS, 3610.0, None)
    verbose = TranscriptionVerbose.model_validate(json.loads(body), strict=True)
    assert content_type == "application/json" and verbose.language == "english" and verbose.duration == 3610.0
    assert verbose.text == "go forward ten meters"
    assert [(s.id, s.start, s.end, s.text) for s in verbose.segments] == [
        (0, 0.31, 1.42, "go forward"), (1, 3605.5, 3606.75, "ten meters")]
    assert verbose.segments[0].avg_logprob == pytest.approx(-0.2231, abs=1e-3)  # log of mean confidence 0.8
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        ("go", 0.35, 0.6), ("forward", 0.62, 1.38), ("ten", 3605.52, 3605.9), ("meters", 3605.95, 3606.7)]


def test_granularities_choose_what_verbose_json_carries():
    _, words_only = render(_params(response_format="verbose_json", **{"timestamp_granularities[]": "word"}),
                           FINALS, 3610.0, "en")
    assert "segments" not in json.loads(words_only) and len(json.loads(words_only)["words"]) == 4
    _, default = render(_params(response_format="verbose_json"), FINALS, 3610.0, "en")
    assert len(json.loads(default)["segments"]) == 2 and "words" not in json.loads(default)


def test_srt_and_vtt_have_one_cue_per_spoken_final_at_its_times_past_the_first_hour():
    _, body = render(_params(response_format="srt"), FINALS, 3610.0, None)
    cues = list(srt.parse(body))
    assert [(c.index, c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (1, 0.31, 1.42, "go forward"), (2, 3605.5, 3606.75, "ten meters")]
    content_type, body = render(_params(response_format="vtt"), FINALS, 3610.0, None)
    captions = webvtt.from_string(body).captions
    assert content_type.startswith("text/vtt")
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.310", "00:00:01.420", "go forward"), ("01:00:05.500", "01:00:06.750", "ten meters")]


def test_json_text_and_the_stream_events_carry_the_joined_text():
    _, body = render(_params(), FINALS, 3610.0, None)
    assert Transcription.model_validate(json.loads(body), strict=True).text == "go forward ten meters"
    assert render(_params(response_format="text"), FINALS, 1.0, None)[1] == "go forward ten meters\n"
    deltas = [sse_delta(FINALS[0], True), sse_delta(FINALS[1], False), sse_delta(FINALS[2], False)]
    assert deltas[1] is None
    events = [json.loads(d.decode().removeprefix("data: ")) for d in (deltas[0], deltas[2], sse_done(FINALS))]
    assert all(d.endswith(b"\n\n") for d in (deltas[0], deltas[2]))
    parsed = [TranscriptionTextDeltaEvent.model_validate(e, strict=True) for e in events[:2]]
    assert "".join(p.delta for p in parsed) == TranscriptionTextDoneEvent.model_validate(events[2]).text


@pytest.mark.parametrize("fields, param, words", [
    ({"model": ""}, "model", "model"),
    ({"language": "pt"}, "language", "not supported"),
    ({"response_format": "diarized_json"}, "response_format", "verbose_json"),
    ({"timestamp_granularities[]": "char", "response_format": "verbose_json"}, "timestamp_granularities[]", "word"),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]", "verbose_json"),
    ({"temperature": "hot"}, "temperature", "0 to 1"),
    ({"stream": "maybe"}, "stream", "true or false"),
    ({"stream": "true", "response_format": "srt"}, "stream", "json or text"),
])
def test_a_bad_field_is_refused_naming_it(fields, param, words):
    with pytest.raises(TranscriptionError) as exc:
        _params(**fields)
    assert exc.value.param == param and words in str(exc.value) and exc.value.status == 400
    body = exc.value.body()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == param and "\n" not in body["message"]


def test_defaults_and_accepted_fields():
    params = _params(language="DE", prompt="ignored", temperature="0.2", stream="false")
    assert params == TranscriptionParams("whisper-1", "de", ResponseFormat.JSON, words=False, segments=True)
