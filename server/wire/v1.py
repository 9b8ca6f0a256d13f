"""Protocol v1: the typed messages shared by `dgasr-server` and `dgasr-client`.

How this works
--------------
A client connects to ``ws://HOST:PORT/v1/listen?...``. The query string is parsed
into :class:`ListenParams` (bad values raise :class:`ParamError`, which the server
turns into an HTTP 400 at the handshake). After that the client sends binary frames
of raw audio and JSON text frames that :func:`parse_client_message` turns into
:class:`Finalize`, :class:`Eos` or :class:`KeepAlive`. The server answers with JSON
text frames, each one a dataclass below with a ``type`` tag; :func:`parse_server_message`
is the inverse used by clients and tests. Every message is defined once, here, so the
server and the client cannot drift apart. See ``docs/protocol.md`` for the user-facing
description and the ordering guarantees.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from server.core import events as ev
from server.core import pcm
from server.core.events import ProblemCode
from server.core.pcm import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Encoding
from server.core.requests import WordTiming
from server.core.rooms import RoomError, check_name, check_speaker
from server.core.session import Session, StreamFormat
from server.wire import BadFrame

__all__ = [
    "CLOSE_REASONS",
    "LANGUAGES",
    "LISTEN_PATH",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "PROTOCOL_VERSION",
    "BadMessage",
    "ClientMessage",
    "Closed",
    "Encoding",
    "Eos",
    "Error",
    "ErrorCode",
    "Final",
    "Finalize",
    "KeepAlive",
    "ListenParams",
    "ParamError",
    "Partial",
    "Ready",
    "ServerMessage",
    "SpeechStarted",
    "SpeechStopped",
    "decode_command",
    "encode_event",
    "parse_client_message",
    "parse_server_message",
    "ready_message",
    "V1Codec",
]

PROTOCOL_VERSION = 1
LISTEN_PATH = "/v1/listen"
LANGUAGES = pcm.LANGUAGES
# Why a session ended, as sent in ``closed.reason``: the client's eos, no audio or
# keepalive for the idle timeout, the client reading nothing for the idle timeout while
# the server had messages for it, or the server stopping (SIGINT/SIGTERM).
CLOSE_REASONS: tuple[str, ...] = ("eos", "idle", "stalled", "shutdown")


ErrorCode = ProblemCode  # v1's error.code values are the core's problem codes


class ParamError(ValueError):
    """A connection parameter is invalid; ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": "bad_request", "field": self.field, "message": self.message}


class BadMessage(BadFrame):
    """A client text frame could not be understood."""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(field: str, raw: str) -> bool:
    """A query flag (true/false, 1/0, yes/no, on/off); :class:`ParamError` names ``field`` otherwise."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ParamError(field, f"expected true or false, got {clip(repr(raw))}")


def parse_int(field: str, raw: str, lo: int, hi: int) -> int:
    """A query integer in ``lo..hi``; :class:`ParamError` names ``field`` otherwise."""
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(field, f"expected an integer, got {clip(repr(raw))}") from None
    if not lo <= value <= hi:
        raise ParamError(field, f"must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class ListenParams:
    """What a client declared when it connected.

    ``draft_steps``/``final_steps`` are ``None`` when the client left them to the server;
    the server clamps explicit values to its own limits (see ``Ready`` for the result).
    """

    sample_rate: int = 16000
    encoding: Encoding = Encoding.PCM_S16LE
    language: str | None = None
    interim_results: bool = True
    draft_steps: int | None = None
    final_steps: int | None = None
    room: str | None = None  # publish into this meeting room (docs/protocol.md, "Rooms")
    speaker: str | None = None  # the label the room shows for this publisher

    KNOWN: ClassVar[frozenset[str]] = frozenset(
        {"sample_rate", "encoding", "language", "interim_results", "draft_steps", "final_steps", "room", "speaker"}
    )

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ListenParams:
        """Parse query parameters; raises :class:`ParamError` naming the first bad one."""
        unknown = sorted(set(query) - cls.KNOWN)
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter; known: {', '.join(sorted(cls.KNOWN))}")
        kwargs: dict[str, Any] = {}
        if "sample_rate" in query:
            kwargs["sample_rate"] = parse_int(
                "sample_rate", query["sample_rate"], MIN_SAMPLE_RATE, MAX_SAMPLE_RATE
            )
        if "encoding" in query:
            try:
                kwargs["encoding"] = Encoding(query["encoding"].strip().lower())
            except ValueError:
                names = ", ".join(e.value for e in Encoding)
                raise ParamError("encoding", f"expected one of {names}, got {query['encoding']!r}") from None
        if "language" in query:
            lang = query["language"].strip().lower()
            if lang in ("", "auto"):
                lang = None
            elif lang not in LANGUAGES:
                raise ParamError("language", f"expected one of {', '.join(LANGUAGES)} or auto, got {lang!r}")
            kwargs["language"] = lang
        if "interim_results" in query:
            kwargs["interim_results"] = parse_bool("interim_results", query["interim_results"])
        for name in ("draft_steps", "final_steps"):
            if name in query:
                kwargs[name] = parse_int(name, query[name], 1, 1000)
        for name, check in (("room", check_name), ("speaker", check_speaker)):
            if name in query:
                try:
                    kwargs[name] = check(query[name])
                except RoomError as exc:
                    raise ParamError(name, str(exc)) from None
        if "speaker" in kwargs and "room" not in kwargs:
            raise ParamError("speaker", "speaker needs a room")
        return cls(**kwargs)

    def stream(self) -> StreamFormat:
        """The stream these parameters declare, as the core session takes it."""
        return StreamFormat(self.sample_rate, self.encoding, self.language, self.interim_results)

    def to_query(self) -> dict[str, str]:
        """The inverse of :meth:`from_query`, omitting values left to the server."""
        out = {
            "sample_rate": str(self.sample_rate),
            "encoding": self.encoding.value,
            "interim_results": "true" if self.interim_results else "false",
        }
        if self.language:
            out["language"] = self.language
        if self.draft_steps is not None:
            out["draft_steps"] = str(self.draft_steps)
        if self.final_steps is not None:
            out["final_steps"] = str(self.final_steps)
        if self.room is not None:
            out["room"] = self.room
        if self.speaker is not None:
            out["speaker"] = self.speaker
        return out


class _Message:
    """Mixin: JSON encoding with the ``type`` tag first."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        body = {"type": self.type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, tuple):  # final.words
                value = [dataclasses.asdict(v) for v in value]
            body[f.name] = value.value if isinstance(value, enum.Enum) else value
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


# ---- client -> server -------------------------------------------------------


@dataclass(frozen=True)
class Finalize(_Message):
    """Close the current segment now and send its final."""

    type: ClassVar[str] = "finalize"


@dataclass(frozen=True)
class Eos(_Message):
    """End of stream: finalize everything, send ``closed`` and close."""

    type: ClassVar[str] = "eos"


@dataclass(frozen=True)
class KeepAlive(_Message):
    """Resets the idle timer without sending audio."""

    type: ClassVar[str] = "keepalive"


ClientMessage = Finalize | Eos | KeepAlive
_CLIENT_TYPES: dict[str, type] = {c.type: c for c in (Finalize, Eos, KeepAlive)}


def parse_client_message(text: str) -> ClientMessage:
    """Parse one client text frame; raises :class:`BadMessage` with a readable reason."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also integers past Python's digit limit
        raise BadMessage(f"not valid JSON: {clip(str(exc))}") from None
    if not isinstance(data, dict):
        raise BadMessage("expected a JSON object with a 'type' field")
    kind = data.get("type")
    cls = _CLIENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadMessage(f"unknown message type {clip(repr(kind))}; expected one of {', '.join(_CLIENT_TYPES)}")
    return cls()


ECHO_LIMIT = 80  # characters of a client's value quoted back in an error message


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with the length it had), so an error's size is bounded."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ---- server -> client -------------------------------------------------------


@dataclass(frozen=True)
class Ready(_Message):
    session_id: str
    model: str
    sample_rate: int
    encoding: str
    language: str | None
    draft_steps: int
    final_steps: int
    interim_results: bool = True
    protocol: int = PROTOCOL_VERSION
    type: ClassVar[str] = "ready"


# The other server messages are the session's events with v1's ``type`` tags: the fields
# are defined once, in server.core.events, and a v1 message *is* the event it encodes.


@dataclass(frozen=True)
class SpeechStarted(_Message, ev.SpeechStarted):
    type: ClassVar[str] = "speech_started"


@dataclass(frozen=True)
class Partial(_Message, ev.Draft):
    type: ClassVar[str] = "partial"


@dataclass(frozen=True)
class SpeechStopped(_Message, ev.SpeechStopped):
    type: ClassVar[str] = "speech_stopped"


@dataclass(frozen=True)
class Final(_Message, ev.Final):
    type: ClassVar[str] = "final"


@dataclass(frozen=True)
class Error(_Message, ev.Problem):
    type: ClassVar[str] = "error"


@dataclass(frozen=True)
class Closed(_Message, ev.Ended):
    type: ClassVar[str] = "closed"


ServerMessage = Ready | SpeechStarted | Partial | SpeechStopped | Final | Error | Closed
_SERVER_TYPES: dict[str, type] = {
    c.type: c for c in (Ready, SpeechStarted, Partial, SpeechStopped, Final, Error, Closed)
}


def parse_server_message(text: str | bytes) -> ServerMessage:
    """Parse one server text frame into its dataclass (unknown fields are ignored)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadMessage(f"server sent invalid JSON: {exc}") from None
    cls = _SERVER_TYPES.get(data.get("type")) if isinstance(data, dict) else None
    if cls is None:
        raise BadMessage(f"unknown server message: {str(text)[:200]}")
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in data.items() if k in names}
    try:
        if isinstance(fields.get("words"), list):
            fields["words"] = tuple(WordTiming(**w) for w in fields["words"])
        return cls(**fields)
    except TypeError as exc:
        raise BadMessage(f"malformed {data['type']} message: {exc}") from None


# ---- the codec between v1 frames and the core session -------------------------

_COMMANDS: dict[type, ev.Command] = {Finalize: ev.Finalize(), Eos: ev.EndStream("eos"), KeepAlive: ev.KeepAlive()}


def decode_command(text: str) -> ev.Command:
    """One v1 text frame as a session command; raises :class:`BadMessage` (already clipped)."""
    return _COMMANDS[type(parse_client_message(text))]


_MESSAGES: dict[type, type] = {ev.SpeechStarted: SpeechStarted, ev.Draft: Partial, ev.SpeechStopped: SpeechStopped,
                               ev.Final: Final, ev.Problem: Error, ev.Ended: Closed}


def encode_event(event: ev.Event) -> ServerMessage:
    """A session event as its v1 message (the same fields, with v1's ``type`` tag)."""
    cls = _MESSAGES.get(type(event))
    if cls is None:
        raise TypeError(f"not a session event: {event!r}")
    return cls(*(getattr(event, f.name) for f in dataclasses.fields(event)))


def ready_message(session: Session) -> Ready:
    """The v1 ``ready`` for a session: what the server settled on (steps clamped to its limits)."""
    stream, config = session.stream, session.config
    return Ready(
        session_id=session.id, model=config.model, sample_rate=stream.sample_rate, encoding=stream.encoding.value,
        language=stream.language, draft_steps=config.draft_steps, final_steps=config.final_steps,
        interim_results=stream.interim_results,
    )


class V1Codec:
    """v1 as a streaming session's codec (:class:`~server.transports.stream.Codec`)."""

    def opening(self, session: Session) -> list[str | bytes]:
        return [ready_message(session).to_json()]

    def decode(self, text: str) -> ev.Command:
        return decode_command(text)

    def encode(self, event: ev.Event) -> list[str | bytes]:
        return [encode_event(event).to_json()]
