"""OpenAI Realtime transcription sessions (``/v1/realtime``): client events, server events, the codec.

How this works
--------------
The official ``openai`` SDK connects to ``{websocket_base_url}/realtime?intent=transcription``
(GA, ``client.realtime.connect``) or, with the header ``OpenAI-Beta: realtime=v1``, as a
legacy beta session (``client.beta.realtime.connect``). Everything is JSON text:
audio arrives base64-encoded in ``input_audio_buffer.append`` (PCM16 mono at 24 kHz,
the only PCM format the API has), and :class:`RealtimeCodec` maps the rest:

=================================================  =========================================
client event                                       session command / reply
=================================================  =========================================
``input_audio_buffer.append``                      ``Audio``
``input_audio_buffer.commit``                      ``Finalize`` (an empty buffer: ``error``)
``input_audio_buffer.clear``                       ``input_audio_buffer.cleared`` (see below)
``session.update`` / ``transcription_session.update``  ``Configure`` (language, turn
                                                   detection); then ``session.updated``
=================================================  =========================================

Session events become ``input_audio_buffer.speech_started`` / ``speech_stopped`` /
``committed`` (chained by ``previous_item_id``; one item per segment),
``conversation.item.input_audio_transcription.delta`` and ``.completed``. With
``turn_detection: null`` (manual commits) the pause that ends a segment is the longest
the model's window allows, so a turn ends at ``commit``, and no speech events are sent.

Deltas: OpenAI's deltas only append, while dgasr's drafts revise earlier words. The
rule: a delta carries the words that two consecutive drafts of the item agree on,
beyond what earlier deltas sent, and only when they extend it; ``completed.transcript``
(the refined final) is authoritative and may differ from the deltas joined.

``input_audio_buffer.clear``: audio not yet in a segment is dropped as the VAD drops
silence anyway; a segment already started still gets its transcript (dgasr gives every
segment that started exactly one final).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.core import events as ev
from server.core.pcm import LANGUAGES, Encoding
from server.core.session import Session, StreamFormat
from server.core.vad_config import ENDLESS_SILENCE_MS
from server.wire import Reply
from server.wire.v1 import clip

__all__ = ["PATH", "RATE", "RealtimeParams", "RealtimeCodec"]

PATH = "/v1/realtime"
RATE = 24000  # audio/pcm and pcm16 in the Realtime API are 24 kHz
DEFAULT_SILENCE_MS = 500  # the API's server_vad default


@dataclass(frozen=True)
class RealtimeParams:
    """What the connection said: whether it is a legacy beta session, and its model (any value)."""

    legacy: bool = False
    model: str = "dgasr"

    @classmethod
    def from_request(cls, query: Mapping[str, str], beta_header: str | None) -> RealtimeParams:
        legacy = bool(beta_header) and "realtime=v1" in beta_header.replace(" ", "")
        return cls(legacy=legacy, model=query.get("model", "dgasr")[:80])

    def stream(self) -> StreamFormat:
        return StreamFormat(RATE, Encoding.PCM_S16LE, None, True)


class _Mistake(Exception):
    """A client event that cannot be honoured: becomes an ``error`` naming its event_id."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


class RealtimeCodec:
    """OpenAI Realtime transcription as a streaming session's codec; one per connection."""

    def __init__(self, params: RealtimeParams, session_id: str = "") -> None:
        self.params = params
        self._prefix = "transcription_session" if params.legacy else "session"
        self._session_id = session_id or f"sess_{uuid.uuid4().hex[:20]}"
        self._events = 0
        self._language: str | None = None
        self._turn: dict[str, Any] | None = {"type": "server_vad", "silence_duration_ms": DEFAULT_SILENCE_MS,
                                             "prefix_padding_ms": 300, "threshold": 0.5}
        self._open: int | None = None  # the segment being spoken
        self._previous: str | None = None  # the last committed item
        self._drafts: dict[int, tuple[list[str], list[str]]] = {}  # segment -> (last draft words, sent words)

    # ---- the session object the API reports --------------------------------

    def _session(self) -> dict[str, Any]:
        transcription = {"model": self.params.model, "language": self._language}
        if self.params.legacy:
            return {"id": self._session_id, "object": "realtime.transcription_session",
                    "client_secret": {"value": "", "expires_at": 0}, "modalities": ["text"],
                    "input_audio_format": "pcm16", "input_audio_transcription": transcription,
                    "turn_detection": self._turn}
        return {"type": "transcription", "id": self._session_id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}, "transcription": transcription,
                                    "turn_detection": self._turn}}}

    def _event(self, kind: str, **body: Any) -> str:
        self._events += 1
        return json.dumps({"type": kind, "event_id": f"event_{self._session_id[-8:]}_{self._events}", **body},
                          ensure_ascii=False)

    @staticmethod
    def _item(segment: int) -> str:
        return f"item_{segment:06d}"

    # ---- Codec --------------------------------------------------------------

    def opening(self, session: Session) -> list[str | bytes]:
        return [self._event(f"{self._prefix}.created", session=self._session())]

    def decode(self, text: str) -> ev.Command | Reply:
        event_id = None
        try:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise _Mistake(f"not valid JSON: {clip(str(exc))}", "invalid_json") from None
            if not isinstance(data, dict):
                raise _Mistake("expected a JSON object with a 'type' field", "invalid_event")
            event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
            return self._command(data)
        except _Mistake as mistake:
            body = {"type": "invalid_request_error", "code": mistake.code, "message": str(mistake),
                    "param": mistake.param, "event_id": clip(event_id) if event_id else None}
            return Reply([self._event("error", error=body)])

    def _command(self, data: dict[str, Any]) -> ev.Command | Reply:
        kind = data.get("type")
        if kind == "input_audio_buffer.append":
            audio = data.get("audio")
            if not isinstance(audio, str):
                raise _Mistake("'audio' must be base64-encoded PCM16 at 24 kHz", "invalid_value", "audio")
            try:
                return ev.Audio(base64.b64decode(audio, validate=True))
            except (binascii.Error, ValueError):
                raise _Mistake("'audio' is not valid base64", "invalid_value", "audio") from None
        if kind == "input_audio_buffer.commit":
            if self._open is None:
                raise _Mistake("buffer has no speech to commit", "input_audio_buffer_commit_empty")
            return ev.Finalize()
        if kind == "input_audio_buffer.clear":
            return Reply([self._event("input_audio_buffer.cleared")])
        if kind in ("session.update", "transcription_session.update"):
            configure = self._update(data.get("session"), legacy=kind == "transcription_session.update")
            return Reply([self._event(f"{self._prefix}.updated", session=self._session())], configure)
        raise _Mistake(f"unknown or unsupported event type {clip(repr(kind))}; a transcription session takes "
                       "input_audio_buffer.append/commit/clear and session.update", "invalid_event", "type")

    def _update(self, session: Any, legacy: bool) -> ev.Configure:
        if not isinstance(session, dict):
            raise _Mistake("'session' must be an object", "invalid_value", "session")
        if legacy:
            audio_format, transcription = session.get("input_audio_format"), session.get("input_audio_transcription")
            turn_given, turn = "turn_detection" in session, session.get("turn_detection")
            if audio_format not in (None, "pcm16"):
                raise _Mistake(f"input_audio_format {clip(repr(audio_format))} is not supported; use pcm16",
                               "unsupported_format", "session.input_audio_format")
        else:
            if session.get("type", "transcription") != "transcription":
                raise _Mistake("this endpoint serves transcription sessions only (session.type 'transcription')",
                               "invalid_value", "session.type")
            audio = session.get("audio")
            audio_in = audio.get("input") if isinstance(audio, dict) else None
            audio_in = audio_in if isinstance(audio_in, dict) else {}
            fmt = audio_in.get("format")
            if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm"
                                    or fmt.get("rate", RATE) != RATE):
                raise _Mistake(f"audio format {clip(repr(fmt))} is not supported; use audio/pcm at 24000 Hz",
                               "unsupported_format", "session.audio.input.format")
            transcription = audio_in.get("transcription")
            turn_given, turn = "turn_detection" in audio_in, audio_in.get("turn_detection")
        configure = ev.Configure()
        if isinstance(transcription, dict) and "language" in transcription:
            language = transcription.get("language")
            language = language.split("-")[0].lower() if isinstance(language, str) and language else None
            if language is not None and language not in LANGUAGES:
                raise _Mistake(f"language {clip(repr(language))} is not supported; use one of {', '.join(LANGUAGES)}",
                               "invalid_value", "session.audio.input.transcription.language")
            self._language = language
            configure = ev.Configure(set_language=True, language=language)
        if turn_given:
            if turn is None:
                self._turn = None
                silence = ENDLESS_SILENCE_MS  # fitted to the window by the session
            elif isinstance(turn, dict) and turn.get("type") in ("server_vad", "semantic_vad"):
                silence = turn.get("silence_duration_ms", DEFAULT_SILENCE_MS)
                if not isinstance(silence, int) or not 0 <= silence <= 60_000:
                    raise _Mistake("silence_duration_ms must be an integer of milliseconds", "invalid_value",
                                   "session.audio.input.turn_detection.silence_duration_ms")
                self._turn = {**turn, "type": "server_vad", "silence_duration_ms": silence}
            else:
                raise _Mistake("turn_detection must be server_vad or null", "invalid_value",
                               "session.audio.input.turn_detection")
            configure = ev.Configure(configure.set_language, configure.language, silence)
        return configure

    def encode(self, event: ev.Event) -> list[str | bytes]:
        match event:
            case ev.SpeechStarted(segment, start):
                self._open = segment
                if self._turn is None:
                    return []
                return [self._event("input_audio_buffer.speech_started", item_id=self._item(segment),
                                    audio_start_ms=round(start * 1000))]
            case ev.SpeechStopped(segment, end):
                self._open = None
                item, previous = self._item(segment), self._previous
                self._previous = item
                frames = [] if self._turn is None else [self._event(
                    "input_audio_buffer.speech_stopped", item_id=item, audio_end_ms=round(end * 1000))]
                return frames + [self._event("input_audio_buffer.committed", item_id=item, previous_item_id=previous)]
            case ev.Draft(segment, text, _, _, _):
                return self._delta(segment, text)
            case ev.Final(segment, text, start, end, _, _, _, _):
                self._drafts.pop(segment, None)
                usage = {"type": "duration", "seconds": round(max(end - start, 0.0), 3)}
                return [self._event("conversation.item.input_audio_transcription.completed",
                                    item_id=self._item(segment), content_index=0, transcript=text, usage=usage)]
            case ev.Problem(code, message, _):
                kind = "server_error" if code is ev.ProblemCode.INTERNAL else "invalid_request_error"
                return [self._event("error", error={"type": kind, "code": code.value, "message": message})]
            case ev.Ended():
                return []  # the API has no closing event: the socket closes
        raise TypeError(f"not a session event: {event!r}")

    def _delta(self, segment: int, text: str) -> list[str | bytes]:
        words = text.split()
        last, sent = self._drafts.get(segment, ([], []))
        stable = []
        for a, b in zip(words, last):
            if a != b:
                break
            stable.append(a)
        self._drafts[segment] = (words, sent)
        if len(stable) <= len(sent) or stable[: len(sent)] != sent:
            return []
        delta = " ".join(stable[len(sent):])
        self._drafts[segment] = (words, stable)
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=self._item(segment),
                            content_index=0, delta=(" " if sent else "") + delta)]
