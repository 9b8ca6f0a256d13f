"""A meeting room as an I/O-free state machine: who is in it, and its events on one clock.

How this works
--------------
A room has publishers (each one a live session, with a ``speaker`` label and a
``stream`` id) and subscribers (readers). Its clock counts seconds since the room was
first opened (``started``, wall-clock seconds, kept by the store so the clock goes on
after a restart). A publisher joining at room time ``t`` has its session times (seconds
since its own first sample) shifted by ``t``: :meth:`Room.translate` turns a session's
``SpeechStarted`` / ``Draft`` / ``SpeechStopped`` / ``Final`` into a :class:`RoomEvent`
with that shift applied to every time (word timings included), tagged with the speaker
and stream. Problems and ``Ended`` stay with the publisher.

States: ``LIVE`` (someone is in the room) <-> ``IDLE`` (nobody, since ``idle_since``);
an idle room is ``expired`` after the idle timeout, and the service forgets it (its
transcript stays in the store). Times are handed in (``now``), never read here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field

from server.core.events import Draft, Event, Final, SpeechStarted, SpeechStopped

__all__ = ["NAME_PATTERN", "Publisher", "Room", "RoomError", "RoomEvent", "RoomState", "check_name", "check_speaker"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SPEAKER = 64


class RoomError(ValueError):
    """A room name or speaker label that cannot be used."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise RoomError(f"room names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                        f"digit; got {name[:80]!r}")
    return name


def check_speaker(label: str) -> str:
    label = " ".join(label.split())
    if not label or len(label) > MAX_SPEAKER or not label.isprintable():
        raise RoomError(f"speaker labels are 1-{MAX_SPEAKER} printable characters; got {label[:80]!r}")
    return label


class RoomState(enum.Enum):
    LIVE = "live"
    IDLE = "idle"


@dataclass(frozen=True)
class RoomEvent:
    """A publisher's event on the room clock, with who said it."""

    speaker: str
    stream: str
    event: SpeechStarted | Draft | SpeechStopped | Final


@dataclass
class Publisher:
    stream: str
    speaker: str
    offset: float  # room time of the publisher's first sample


@dataclass
class Room:
    name: str
    started: float  # wall-clock seconds when the room first opened
    publishers: dict[str, Publisher] = field(default_factory=dict)
    subscribers: set[str] = field(default_factory=set)
    speakers: list[str] = field(default_factory=list)  # everyone who has spoken here, in order of joining
    idle_since: float | None = None

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def state(self) -> RoomState:
        return RoomState.LIVE if self.publishers or self.subscribers else RoomState.IDLE

    def clock(self, now: float) -> float:
        return round(max(0.0, now - self.started), 3)

    def join_publisher(self, stream: str, speaker: str, now: float) -> Publisher:
        publisher = Publisher(stream, check_speaker(speaker), self.clock(now))
        self.publishers[stream] = publisher
        if publisher.speaker not in self.speakers:
            self.speakers.append(publisher.speaker)
        self.idle_since = None
        return publisher

    def join_subscriber(self, subscriber: str) -> None:
        self.subscribers.add(subscriber)
        self.idle_since = None

    def leave(self, who: str, now: float) -> None:
        self.publishers.pop(who, None)
        self.subscribers.discard(who)
        if self.state is RoomState.IDLE and self.idle_since is None:
            self.idle_since = now

    def expired(self, now: float, idle_timeout: float) -> bool:
        return self.idle_since is not None and now - self.idle_since >= idle_timeout

    def translate(self, stream: str, event: Event) -> RoomEvent | None:
        """``event`` of publisher ``stream`` on the room clock; None for what stays private."""
        publisher = self.publishers.get(stream)
        if publisher is None or not isinstance(event, (SpeechStarted, Draft, SpeechStopped, Final)):
            return None
        return RoomEvent(publisher.speaker, stream, _shift(event, publisher.offset))


def _shift(event, offset: float):
    changes = {name: round(getattr(event, name) + offset, 3) for name in ("start", "end") if hasattr(event, name)}
    if isinstance(event, Final):
        changes["words"] = tuple(dataclasses.replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3))
                                 for w in event.words)
    return dataclasses.replace(event, **changes)
