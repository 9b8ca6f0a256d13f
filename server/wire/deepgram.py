"""Deepgram live (``/deepgram/v1/listen``): its query parameters, its messages, and the codec.

How this works
--------------
The official ``deepgram-sdk`` connects to ``{production}/v1/listen?model=...&encoding=linear16&...``;
dgasr serves it under the ``/deepgram`` prefix because the native protocol owns
``/v1/listen``. :class:`DeepgramParams` reads the query (unknown parameters are accepted
and ignored, as Deepgram has dozens; a value dgasr cannot honour is a 400 naming it).
:class:`DeepgramCodec` is the streaming codec: ``KeepAlive``/``Finalize``/``CloseStream``
become session commands, and session events become Deepgram messages:

============================  ==================================================
session event                 Deepgram message
============================  ==================================================
``SpeechStarted``             ``SpeechStarted`` (only with ``vad_events=true``)
``Draft``                     ``Results`` with ``is_final: false`` (``interim_results=true``)
``SpeechStopped``             nothing
``Final``                     ``Results`` with ``is_final: true``; ``speech_final`` when the
                              VAD ended the segment, ``from_finalize`` when ``Finalize`` did;
                              then ``UtteranceEnd`` when ``utterance_end_ms`` is set; with
                              ``language=multi`` its alternative names the language heard
                              (``languages``, as Deepgram's multilingual results do)
``Problem``                   ``Error`` (``variant`` = the problem code)
``Ended``                     ``Metadata``, then the socket closes with 1000
============================  ==================================================

Each segment is one utterance: its interim and final ``Results`` cover the segment from
its start, finals never overlap, and no interim reaches back into finalized audio.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from server.core import events as ev
from server.core.pcm import (
    LANGUAGES,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    Encoding,
)
from server.core.session import Session, StreamFormat
from server.core.vad_config import ENDLESS_SILENCE_MS
from server.wire import BadFrame
from server.wire.v1 import ECHO_LIMIT, ParamError, clip, parse_bool, parse_int

__all__ = ["PATH", "DeepgramParams", "DeepgramParamError", "DeepgramCodec"]

PATH = "/deepgram/v1/listen"
_CHANNELS = [0, 1]  # channel_index as Deepgram sends it for mono: [channel, channel count]


class DeepgramParamError(ValueError):
    """A query parameter dgasr cannot honour; answered with HTTP 400."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.field = name

    def to_dict(self) -> dict[str, str]:
        return {"err_code": "INVALID_QUERY_PARAMETER", "err_msg": str(self)}


def _flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    return default if query.get(name) is None else parse_bool(name, query[name])


def _integer(query: Mapping[str, str], name: str, lo: int, hi: int) -> int | None:
    return None if query.get(name) is None else parse_int(name, query[name], lo, hi)


@dataclass(frozen=True)
class DeepgramParams:
    """What a Deepgram client asked for, in dgasr's terms."""

    model: str = "dgasr"
    sample_rate: int = SAMPLE_RATE
    language: str | None = "en"  # Deepgram's default; "multi" = detect
    interim_results: bool = False
    silence_ms: int | None = None  # endpointing: None = the server's own
    utterance_end_ms: int | None = None
    vad_events: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> DeepgramParams:
        try:
            return cls._from_query(query)
        except ParamError as exc:  # the shared parsers' error, in Deepgram's shape
            raise DeepgramParamError(exc.field, exc.message) from None

    @classmethod
    def _from_query(cls, query: Mapping[str, str]) -> DeepgramParams:
        encoding = query.get("encoding", "linear16").strip().lower()
        if encoding != "linear16":
            raise DeepgramParamError("encoding", f"dgasr takes raw linear16 audio, got {clip(repr(encoding))}")
        channels = _integer(query, "channels", 1, 16)
        if channels not in (None, 1):
            raise DeepgramParamError("channels", f"dgasr transcribes mono audio, got {channels} channels")
        rate = _integer(query, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE) or SAMPLE_RATE
        language: str | None = query.get("language", "en").strip().lower()
        if language == "multi":
            language = None
        else:
            primary = language.split("-")[0]
            if primary not in LANGUAGES:
                raise DeepgramParamError("language", f"expected one of {', '.join(LANGUAGES)} (or a regional "
                                         f"form such as en-US) or multi, got {clip(repr(language))}")
            language = primary
        endpointing = query.get("endpointing")
        if endpointing is not None and endpointing.strip().lower() == "false":
            silence_ms: int | None = ENDLESS_SILENCE_MS  # fitted to the window by the server
        else:
            silence_ms = _integer(query, "endpointing", 0, 60_000)
        return cls(
            model=query.get("model", "dgasr")[:ECHO_LIMIT], sample_rate=rate, language=language,
            interim_results=_flag(query, "interim_results", False), silence_ms=silence_ms,
            utterance_end_ms=_integer(query, "utterance_end_ms", 1, 60_000),
            vad_events=_flag(query, "vad_events", False),
        )

    def stream(self) -> StreamFormat:
        return StreamFormat(self.sample_rate, Encoding.PCM_S16LE, self.language, self.interim_results)


# ---- server messages (the fields the SDK's models require, and the flags) ---------


class _Message:
    type: ClassVar[str]

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **dataclasses.asdict(self, dict_factory=_present)}, ensure_ascii=False)


def _present(fields: list[tuple[str, object]]) -> dict:
    """asdict's dict, less the optional fields Deepgram leaves out when they do not apply."""
    return {k: v for k, v in fields if not (k in _OPTIONAL and v is None)}


_OPTIONAL = frozenset({"languages"})


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float
    punctuated_word: str


@dataclass(frozen=True)
class Alternative:
    transcript: str
    confidence: float
    words: list[Word] = field(default_factory=list)
    languages: list[str] | None = None  # language=multi only: the language heard (left out otherwise, as Deepgram does)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str = "1"
    arch: str = "dgasr"


@dataclass(frozen=True)
class ResultsMetadata:
    request_id: str
    model_info: ModelInfo
    model_uuid: str


@dataclass(frozen=True)
class Channel:
    alternatives: list[Alternative]


@dataclass(frozen=True)
class Results(_Message):
    channel_index: list[int]
    start: float
    duration: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    channel: Channel
    metadata: ResultsMetadata
    type: ClassVar[str] = "Results"


@dataclass(frozen=True)
class SpeechStarted(_Message):
    channel: list[int]
    timestamp: float
    type: ClassVar[str] = "SpeechStarted"


@dataclass(frozen=True)
class UtteranceEnd(_Message):
    channel: list[int]
    last_word_end: float
    type: ClassVar[str] = "UtteranceEnd"


@dataclass(frozen=True)
class Metadata(_Message):
    transaction_key: str
    request_id: str
    sha256: str
    created: str
    duration: float
    channels: int
    type: ClassVar[str] = "Metadata"


@dataclass(frozen=True)
class Error(_Message):
    variant: str
    description: str
    message: str
    type: ClassVar[str] = "Error"


_COMMANDS: dict[str, ev.Command] = {"KeepAlive": ev.KeepAlive(), "Finalize": ev.Finalize(),
                                    "CloseStream": ev.EndStream("eos")}


class DeepgramCodec:
    """Deepgram live as a streaming session's codec; one per connection (it keeps a little state).

    The state: which segment is open (from the events it encodes) and whether the text
    frame being handled is ``Finalize``, so the final of the segment it closes says
    ``from_finalize: true``.
    """

    def __init__(self, params: DeepgramParams) -> None:
        self.params = params
        self.request_id = str(uuid.uuid4())
        self._metadata = ResultsMetadata(self.request_id, ModelInfo(params.model), str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                                               params.model)))
        self._created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._finalizing = False
        self._from_finalize: set[int] = set()

    def opening(self, session: Session) -> list[str | bytes]:
        return []  # Deepgram sends nothing until there is something to say

    def decode(self, text: str) -> ev.Command:
        self._finalizing = False
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise BadFrame(f"not valid JSON: {clip(str(exc))}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        command = _COMMANDS.get(kind) if isinstance(kind, str) else None
        if command is None:
            raise BadFrame(f"unknown message type {clip(repr(kind))}; expected one of {', '.join(_COMMANDS)}")
        self._finalizing = isinstance(command, ev.Finalize)
        return command

    def encode(self, event: ev.Event) -> list[str | bytes]:
        match event:
            case ev.SpeechStarted(_, start):
                return [SpeechStarted(_CHANNELS, start).to_json()] if self.params.vad_events else []
            case ev.Draft(_, text, start, end, _):
                return [self._results(text, start, end, final=False).to_json()]
            case ev.SpeechStopped(segment, _):
                if self._finalizing:
                    self._from_finalize.add(segment)
                return []
            case ev.Final(segment, text, start, end, _, language, _, words):
                forced = segment in self._from_finalize
                self._from_finalize.discard(segment)
                heard = [language] if self.params.language is None and language and text else None
                frames: list[str | bytes] = [self._results(text, start, end, final=True, forced=forced,
                                                           words=words, languages=heard).to_json()]
                if self.params.utterance_end_ms is not None and text:
                    frames.append(UtteranceEnd(_CHANNELS, end).to_json())
                return frames
            case ev.Problem(code, message, _):
                return [Error(code.value, message, message).to_json()]
            case ev.Ended(_, _, audio_seconds):
                return [Metadata("deprecated", self.request_id, "", self._created, audio_seconds, 1).to_json()]
        raise TypeError(f"not a session event: {event!r}")

    def _results(self, text: str, start: float, end: float, final: bool, forced: bool = False,
                 words: tuple = (), languages: list[str] | None = None) -> Results:
        # Interims carry no words; a final's confidence is the mean of its words' (1.0 without words).
        timed = [Word(w.word, w.start, w.end, w.confidence, w.word) for w in words]
        confidence = round(sum(w.confidence for w in timed) / len(timed), 3) if timed else (1.0 if text else 0.0)
        alternative = Alternative(text, confidence, timed, languages)
        return Results(_CHANNELS, start, round(max(end - start, 0.0), 3), final, final and not forced, forced,
                       Channel([alternative]), self._metadata)
