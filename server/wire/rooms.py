"""Rooms on the wire: subscriber messages, the room list and transcripts in four formats.

How this works
--------------
A subscriber of ``/v1/rooms/NAME`` first gets ``room`` (the name, when it started, the
room clock now, the speakers so far), then every publisher's ``speech_started`` /
``partial`` / ``speech_stopped`` / ``final``: the native v1 message (same fields, times
on the room clock) plus ``speaker`` and ``stream``. Transcripts are the stored finals in
time order: ``json`` (each final with speaker, stream, segment, times, text, words),
``txt`` (``[HH:MM:SS] speaker: text`` lines), ``srt`` and ``vtt`` (one cue per final, the
speaker before the text).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence

from server.core.rooms import Room, RoomEvent
from server.wire.captions import srt_document, vtt_document
from server.wire.v1 import encode_event

__all__ = ["FORMATS", "encode_room_event", "room_hello", "room_listing", "render_transcript"]

FORMATS = {"json": "application/json", "txt": "text/plain; charset=utf-8", "srt": "application/x-subrip",
           "vtt": "text/vtt; charset=utf-8"}


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode_room_event(item: RoomEvent) -> str:
    body = encode_event(item.event).to_dict()
    body["speaker"] = item.speaker
    body["stream"] = item.stream
    return json.dumps(body, ensure_ascii=False)


def room_hello(room: Room, now: float) -> str:
    return json.dumps({"type": "room", "room": room.name, "started": _iso(room.started), "clock": room.clock(now),
                       "speakers": list(room.speakers)}, ensure_ascii=False)


def room_listing(records: Sequence, live: dict[str, Room]) -> dict:
    """``GET /v1/rooms``: every room the store knows, and the live ones it has not stored yet."""
    rooms = {}
    for record in records:
        room = live.get(record.name)
        speakers = list(record.speakers) + [s for s in (room.speakers if room else []) if s not in record.speakers]
        rooms[record.name] = {"name": record.name, "live": room is not None, "speakers": speakers,
                              "subscribers": len(room.subscribers) if room else 0, "publishers":
                              len(room.publishers) if room else 0, "started": _iso(record.started),
                              "finals": record.finals}
    for name, room in live.items():
        rooms.setdefault(name, {"name": name, "live": True, "speakers": list(room.speakers),
                                "subscribers": len(room.subscribers), "publishers": len(room.publishers),
                                "started": _iso(room.started), "finals": 0})
    return {"rooms": sorted(rooms.values(), key=lambda r: r["started"])}


def _clock(seconds: float) -> str:
    whole = int(math.floor(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def render_transcript(room: str, finals: Sequence, fmt: str) -> tuple[str, str]:
    """``(content type, body)`` of a room's stored finals (already in time order) in ``fmt``."""
    spoken = [f for f in finals if f.text]
    if fmt == "json":
        body = json.dumps({"room": room, "finals": [
            {"speaker": f.speaker, "stream": f.stream, "segment": f.segment, "start": f.start, "end": f.end,
             "text": f.text, "words": [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                                       for w in f.words]} for f in spoken]}, ensure_ascii=False)
    elif fmt == "txt":
        body = "".join(f"[{_clock(f.start)}] {f.speaker}: {f.text}\n" for f in spoken)
    elif fmt == "srt":
        body = srt_document([(f.start, f.end, f"{f.speaker}: {f.text}") for f in spoken])
    elif fmt == "vtt":
        body = vtt_document([(f.start, f.end, f"{f.speaker}: {f.text}") for f in spoken])
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return FORMATS[fmt], body
