"""The segmenter's events: what :class:`server.core.vad.Segmenter` says about a stream.

Kept apart from the state machine in ``vad.py`` so the session and tests can name the
events without the VAD; ``EventCollector`` merges one call's adjacent audio into one event, so
only the audio events' sizes depend on how the caller chunks its input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EndReason", "SegmentAudio", "SegmentEnded", "SegmentEvent", "SegmentStarted"]


class EndReason(enum.StrEnum):
    SILENCE = "silence"
    FORCED_SPLIT = "forced_split"
    FINALIZE = "finalize"
    END_OF_STREAM = "end_of_stream"


@dataclass(frozen=True)
class SegmentStarted:
    segment: int
    start: int


@dataclass(frozen=True, eq=False)
class SegmentAudio:
    """Audio of the open segment, in order; a segment's audio is the concatenation."""

    segment: int
    samples: np.ndarray = field(repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentAudio):
            return NotImplemented
        return self.segment == other.segment and np.array_equal(self.samples, other.samples)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SegmentEnded:
    segment: int
    end: int
    reason: EndReason


SegmentEvent = SegmentStarted | SegmentAudio | SegmentEnded


class EventCollector:
    """Collects one call's events, merging adjacent audio of the same segment."""

    def __init__(self) -> None:
        self.events: list[SegmentEvent] = []
        self._parts: list[np.ndarray] = []
        self._segment = -1

    def audio(self, segment: int, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        if self._parts and segment != self._segment:
            self._flush()
        self._segment = segment
        self._parts.append(samples.copy())  # callers pass views of buffers we reuse

    def add(self, event: SegmentEvent) -> None:
        self._flush()
        self.events.append(event)

    def done(self) -> list[SegmentEvent]:
        self._flush()
        return self.events

    def _flush(self) -> None:
        if self._parts:
            samples = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
            samples.flags.writeable = False
            self.events.append(SegmentAudio(self._segment, samples))
            self._parts = []
