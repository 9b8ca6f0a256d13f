"""What a session takes in (commands) and gives out (events), independent of any wire protocol.

How this works
--------------
A transport decodes its frames into the commands below and hands them to
:meth:`server.core.session.Session.handle`; the session answers with events (and engine
jobs). Each protocol's codec (``server/wire/``) encodes the events into its own messages:
v1 sends ``Draft`` as ``partial`` and ``Ended`` as ``closed``; another protocol may send
them under other names, or not at all. Nothing here knows JSON, sockets or field names
on a wire, so a second protocol reaches the session without pretending to be v1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.core.requests import WordTiming

__all__ = [
    "Audio",
    "Command",
    "Draft",
    "EndStream",
    "Ended",
    "Event",
    "Final",
    "Finalize",
    "KeepAlive",
    "Problem",
    "ProblemCode",
    "SpeechStarted",
    "SpeechStopped",
]


class ProblemCode(enum.StrEnum):
    """Why something a client sent or asked for went wrong (v1 sends these as ``error.code``)."""

    BAD_AUDIO = "bad_audio"
    BAD_MESSAGE = "bad_message"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


# ---- commands: transport -> session ---------------------------------------


@dataclass(frozen=True)
class Audio:
    """Raw audio bytes in the stream's declared encoding (any size; partial samples are held)."""

    data: bytes


@dataclass(frozen=True)
class Finalize:
    """Close the current segment now (push-to-talk release, end of a dictated sentence)."""


@dataclass(frozen=True)
class EndStream:
    """No more audio: finalize what is open; ``Ended`` follows the last final.

    ``reason`` is what ``Ended`` will carry: ``eos`` (the client asked), ``idle``,
    ``stalled`` or ``shutdown``.
    """

    reason: str = "eos"


@dataclass(frozen=True)
class KeepAlive:
    """The client is still there; changes nothing in the session (the transport's idle timer resets)."""


@dataclass(frozen=True)
class Configure:
    """Change the stream's settings mid-stream (a protocol's session update).

    ``language``: the hint for segments that start from now on (``None`` = detect);
    left out when ``set_language`` is false. ``silence_ms``: the pause that ends a
    segment (capped at the longest the model's window allows; ``None`` = unchanged).
    """

    set_language: bool = False
    language: str | None = None
    silence_ms: int | None = None


Command = Audio | Finalize | EndStream | KeepAlive | Configure


# ---- events: session -> transport ------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    segment: int
    start: float  # seconds since the stream's first sample


@dataclass(frozen=True)
class Draft:
    """A low-step transcript of a segment still open; a newer one replaces it."""

    segment: int
    text: str
    start: float
    end: float
    steps: int


@dataclass(frozen=True)
class SpeechStopped:
    segment: int
    end: float


@dataclass(frozen=True)
class Final:
    """The refined transcript of a closed segment: exactly one per segment, in segment order.

    ``words``: each word with its start and end in stream seconds (empty when the audio
    has too few frames for the text to be aligned).
    """

    segment: int
    text: str
    start: float
    end: float
    steps: int
    language: str | None
    latency_ms: float  # from the segment's close to this final
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True)
class Problem:
    """Something went wrong; ``fatal`` ones end the stream (its finals still follow)."""

    code: ProblemCode
    message: str
    fatal: bool = False


@dataclass(frozen=True)
class Ended:
    """The last event of a stream: every final has been given out before it."""

    reason: str
    segments: int
    audio_seconds: float


Event = SpeechStarted | Draft | SpeechStopped | Final | Problem | Ended
