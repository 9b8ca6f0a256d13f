"""OpenAI's file transcription API (``POST /v1/audio/transcriptions``): form fields in, bodies out.

How this works
--------------
:meth:`TranscriptionParams.from_form` reads the multipart form's text fields as OpenAI
documents them (``model``, ``language``, ``prompt``, ``response_format``,
``timestamp_granularities[]``, ``temperature``, ``stream``) and raises
:class:`TranscriptionError` (HTTP 400, OpenAI's error body) for a value dgasr cannot
honour. :func:`render` turns a file's finals into the body of the asked format:

- ``json``: ``{"text", "usage"}``; ``text``: the text and a newline;
- ``srt`` / ``vtt``: one cue per segment (the libraries ``srt`` and ``webvtt-py`` write them);
- ``verbose_json``: ``duration``, ``language`` (OpenAI's lower-case English name),
  ``text``, ``segments`` (unless only words were asked for) and ``words`` (when asked).

With ``stream=true`` the body is server-sent events: one ``transcript.text.delta`` per
segment as it is final (its text, with a leading space after the first), then one
``transcript.text.done`` with the whole text, as the official SDK's stream reads them.

What differs from OpenAI: ``model`` is accepted whatever it names; ``prompt`` and
``temperature`` are accepted and ignored; ``segments[].tokens`` is empty and
``avg_logprob`` is the log of the segment's mean word confidence.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping, Sequence

from server.core.events import Final
from server.core.pcm import LANGUAGES
from server.wire.captions import Cue, srt_document, vtt_document

__all__ = ["PATH", "ResponseFormat", "TranscriptionError", "TranscriptionParams", "render",
           "sse_delta", "sse_done", "error_body"]

PATH = "/v1/audio/transcriptions"
LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "hi": "hindi", "zh": "chinese"}


class ResponseFormat(enum.StrEnum):
    JSON = "json"
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"
    VERBOSE_JSON = "verbose_json"

    @property
    def content_type(self) -> str:
        return {ResponseFormat.JSON: "application/json", ResponseFormat.VERBOSE_JSON: "application/json",
                ResponseFormat.TEXT: "text/plain; charset=utf-8", ResponseFormat.SRT: "application/x-subrip",
                ResponseFormat.VTT: "text/vtt; charset=utf-8"}[self]


class TranscriptionError(ValueError):
    """A request dgasr cannot honour: HTTP ``status`` with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def body(self) -> dict:
        return error_body(str(self), self.param, self.code)


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise TranscriptionError(f"{name} must be true or false, got {value!r}", name)


@dataclasses.dataclass(frozen=True)
class TranscriptionParams:
    model: str
    language: str | None = None
    response_format: ResponseFormat = ResponseFormat.JSON
    words: bool = False
    segments: bool = False
    stream: bool = False

    @classmethod
    def from_form(cls, form: Mapping[str, Sequence[str]]) -> TranscriptionParams:
        """The request's settings from its form fields (each a list of values, as sent)."""

        def one(name: str) -> str | None:
            values = form.get(name) or []
            return values[-1] if values else None

        model = one("model")
        if not model:
            raise TranscriptionError("you must provide a model parameter", "model", code=None)
        language = (one("language") or "").strip().lower() or None
        if language is not None and language not in LANGUAGES:
            raise TranscriptionError(f"language {language!r} is not supported; use one of {', '.join(LANGUAGES)} "
                                     "or leave it out to detect it", "language", code="unsupported_language")
        raw_format = one("response_format") or "json"
        try:
            response_format = ResponseFormat(raw_format)
        except ValueError:
            choices = ", ".join(f.value for f in ResponseFormat)
            raise TranscriptionError(f"response_format {raw_format!r} is not supported; use one of {choices}",
                                     "response_format") from None
        granularities = list(form.get("timestamp_granularities[]") or []) + list(form.get("timestamp_granularities")
                                                                                 or [])
        for value in granularities:
            if value not in ("word", "segment"):
                raise TranscriptionError(f"timestamp_granularities[] {value!r} must be word or segment",
                                         "timestamp_granularities[]")
        if granularities and response_format is not ResponseFormat.VERBOSE_JSON:
            raise TranscriptionError("timestamp_granularities[] needs response_format verbose_json",
                                     "timestamp_granularities[]")
        temperature = one("temperature")
        if temperature is not None:
            try:
                if not 0.0 <= float(temperature) <= 1.0:
                    raise ValueError
            except ValueError:
                raise TranscriptionError(f"temperature must be a number from 0 to 1, got {temperature!r}",
                                         "temperature") from None
        stream = _bool("stream", one("stream") or "false")
        if stream and response_format not in (ResponseFormat.JSON, ResponseFormat.TEXT):
            raise TranscriptionError("stream=true streams text events; use response_format json or text",
                                     "stream", code="unsupported_value")
        return cls(model, language, response_format, words="word" in granularities,
                   segments="segment" in granularities or not granularities, stream=stream)


def _text(finals: Sequence[Final]) -> str:
    return " ".join(f.text for f in finals if f.text)


def _spoken(finals: Sequence[Final]) -> list[Final]:
    return [f for f in finals if f.text]


def _segment(i: int, final: Final) -> dict:
    confidences = [w.confidence for w in final.words]
    mean = sum(confidences) / len(confidences) if confidences else 1.0
    return {"id": i, "seek": 0, "start": final.start, "end": final.end, "text": final.text, "tokens": [],
            "temperature": 0.0, "avg_logprob": round(math.log(max(mean, 1e-6)), 4), "compression_ratio": 1.0,
            "no_speech_prob": 0.0}


def _cues(finals: Sequence[Final]) -> list[Cue]:
    return [(f.start, f.end, f.text) for f in _spoken(finals)]


def render(params: TranscriptionParams, finals: Sequence[Final], duration: float,
           language: str | None) -> tuple[str, str]:
    """``(content type, body)`` of the non-streamed response in ``params.response_format``."""
    fmt = params.response_format
    text = _text(finals)
    usage = {"type": "duration", "seconds": round(duration, 3)}
    if fmt is ResponseFormat.JSON:
        body = json.dumps({"text": text, "usage": usage}, ensure_ascii=False)
    elif fmt is ResponseFormat.TEXT:
        body = text + "\n"
    elif fmt is ResponseFormat.SRT:
        body = srt_document(_cues(finals))
    elif fmt is ResponseFormat.VTT:
        body = vtt_document(_cues(finals))
    else:
        detected = next((f.language for f in finals if f.language), None) or language
        verbose: dict = {"task": "transcribe", "language": LANGUAGE_NAMES.get(detected or "", detected or "unknown"),
                         "duration": round(duration, 3), "text": text, "usage": usage}
        if params.segments:
            verbose["segments"] = [_segment(i, f) for i, f in enumerate(_spoken(finals))]
        if params.words:
            verbose["words"] = [{"word": w.word, "start": w.start, "end": w.end}
                                for f in finals for w in f.words]
        body = json.dumps(verbose, ensure_ascii=False)
    return fmt.content_type, body


def sse_delta(final: Final, first: bool) -> bytes | None:
    """One ``transcript.text.delta`` event for a final with text (None for an empty one)."""
    if not final.text:
        return None
    delta = final.text if first else " " + final.text
    return _sse({"type": "transcript.text.delta", "delta": delta})


def sse_done(finals: Sequence[Final]) -> bytes:
    return _sse({"type": "transcript.text.done", "text": _text(finals)})


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
