"""Wire codecs, one module per protocol: ``v1`` (native), ``deepgram`` (Deepgram live), ``realtime`` (OpenAI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.core.events import Command

__all__ = ["BadFrame", "Reply"]


class BadFrame(ValueError):
    """A client frame a protocol cannot read; the message says why (already cut to size)."""


@dataclass(frozen=True)
class Reply:
    """What a codec makes of a client frame when it answers it itself.

    ``frames`` go to the client after ``command`` (if any) has been handled: OpenAI's
    ``session.updated`` after the update, or an ``error`` that names the client's
    ``event_id``, which a session problem could not.
    """

    frames: list[str] = field(default_factory=list)
    command: Command | None = None
