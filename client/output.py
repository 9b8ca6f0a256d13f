"""Output formats for ``dgasr-client``: pure formatting onto a given text stream.

How this works
--------------
A sink receives every server event in order through :meth:`Sink.handle` and writes what
its format needs, flushing after each complete unit so that a pipe reader sees lines as
they are final and a file is valid whenever the process stops (Ctrl-C included):

* ``text``  - one line per non-empty final, nothing else (pipe-friendly dictation).
* ``jsonl`` - every event as one JSON line (``to_json`` of the protocol dataclass).
* ``srt`` / ``vtt`` - subtitle cues written as each final arrives. A long final is
  wrapped into lines of at most 42 columns, grouped two lines per cue, and the final's
  time span is divided between its cues in proportion to their characters, so the cues
  cover ``[start, end]`` exactly and back to back. Empty finals make no cue.
* ``live`` - captions for a terminal: the open segment's partial is redrawn in place
  (``\\r`` + clear line, dimmed), each final is committed on its own line as
  ``[mm:ss] text``. Without a terminal it writes only the final lines, never a control
  character.

Server text is cleaned of control characters before it is written, so a hostile or
buggy server cannot move the cursor or break a cue.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from server.wire.v1 import Final, Partial, ServerMessage

__all__ = [
    "FORMATS",
    "Cue",
    "Sink",
    "TextSink",
    "JsonlSink",
    "SrtSink",
    "VttSink",
    "LiveSink",
    "make_sink",
    "wrap_text",
    "split_cues",
    "format_timestamp",
    "clean_text",
]

FORMATS = ("live", "text", "jsonl", "srt", "vtt")
LINE_WIDTH = 42
LINES_PER_CUE = 2

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def clean_text(text: str) -> str:
    """Replace control characters (escapes, newlines) with spaces and squeeze blanks."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _width(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two, combining marks none."""
    cols = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        cols += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cols


def _hard_split(word: str, width: int) -> list[str]:
    """Cut a word wider than a line (a URL, unspaced CJK text) at column ``width``."""
    pieces, current = [], ""
    for ch in word:
        if current and _width(current + ch) > width:
            pieces.append(current)
            current = ""
        current += ch
    return pieces + [current] if current else pieces


def wrap_text(text: str, width: int = LINE_WIDTH) -> list[str]:
    """Greedy word wrap into lines of at most ``width`` columns."""
    lines: list[str] = []
    current = ""
    for word in clean_text(text).split(" "):
        for piece in _hard_split(word, width) if _width(word) > width else [word]:
            candidate = f"{current} {piece}" if current else piece
            if current and _width(candidate) > width:
                lines.append(current)
                candidate = piece
            current = candidate
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class Cue:
    """One subtitle: times in whole milliseconds, one or two lines of text."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def split_cues(final: Final, width: int = LINE_WIDTH, max_lines: int = LINES_PER_CUE) -> list[Cue]:
    """Cut a final into readable cues that share its time span in proportion to length.

    Boundaries are computed once in integer milliseconds and shared by neighbouring cues,
    so the first cue starts at ``final.start``, the last ends at ``final.end`` and there
    is neither gap nor overlap between them.
    """
    lines = wrap_text(final.text, width)
    if not lines:
        return []
    groups = [tuple(lines[i : i + max_lines]) for i in range(0, len(lines), max_lines)]
    start_ms = round(final.start * 1000)
    end_ms = max(start_ms, round(final.end * 1000))
    weights = [sum(len(line) for line in group) for group in groups]
    total = sum(weights)
    bounds, acc = [start_ms], 0
    for weight in weights[:-1]:
        acc += weight
        bounds.append(start_ms + round((end_ms - start_ms) * acc / total))
    bounds.append(end_ms)
    return [Cue(bounds[i], bounds[i + 1], group) for i, group in enumerate(groups)]


def format_timestamp(ms: int, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``decimal="."`` ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal}{millis:03d}"


def _clock(seconds: float) -> str:
    """``mm:ss`` for the live view, ``h:mm:ss`` past the first hour."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Sink:
    """Receives server events in order. Subclasses override :meth:`handle`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def handle(self, message: ServerMessage) -> None:
        """Write whatever this format shows for ``message``."""

    def clear(self) -> None:
        """Take transient output (a live partial) off the screen before a notice is printed."""

    def close(self) -> None:
        """Finish the output; every format is already complete after each event."""
        self.stream.flush()

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class TextSink(Sink):
    def handle(self, message: ServerMessage) -> None:
        if isinstance(message, Final) and (text := clean_text(message.text)):
            self._emit(text + "\n")


class JsonlSink(Sink):
    def handle(self, message: ServerMessage) -> None:
        self._emit(message.to_json() + "\n")


class SrtSink(Sink):
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank line after each."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.cues = 0

    def handle(self, message: ServerMessage) -> None:
        if not isinstance(message, Final):
            return
        for cue in split_cues(message):
            self.cues += 1
            times = f"{format_timestamp(cue.start_ms)} --> {format_timestamp(cue.end_ms)}"
            self._emit(f"{self.cues}\n{times}\n" + "\n".join(cue.lines) + "\n\n")


class VttSink(Sink):
    """WebVTT: the ``WEBVTT`` header up front, then cues as finals arrive."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.cues = 0
        self._emit("WEBVTT\n\n")

    def handle(self, message: ServerMessage) -> None:
        if not isinstance(message, Final):
            return
        for cue in split_cues(message):
            self.cues += 1
            times = f"{format_timestamp(cue.start_ms, '.')} --> {format_timestamp(cue.end_ms, '.')}"
            text = "\n".join(_vtt_escape(line) for line in cue.lines)
            self._emit(f"{self.cues}\n{times}\n{text}\n\n")


def _vtt_escape(line: str) -> str:
    # '<' and '&' start tags and entities in cue text; '-->' would end the timing line.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class LiveSink(Sink):
    """Terminal captions: partial redrawn in place, finals committed with a timestamp."""

    DIM, RESET, CLEAR_LINE = "\x1b[2m", "\x1b[0m", "\r\x1b[2K"

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        dim: bool = True,
        columns: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(stream)
        self.tty = tty
        self.dim = dim
        self._columns = columns or (lambda: 80)
        self._partial_shown = False

    def handle(self, message: ServerMessage) -> None:
        if isinstance(message, Partial):
            if self.tty:
                self._draw_partial(clean_text(message.text))
        elif isinstance(message, Final):
            self.clear()
            if text := clean_text(message.text):
                self._emit(f"[{_clock(message.start)}] {text}\n")

    def _draw_partial(self, text: str) -> None:
        # `\r` only returns within one screen row, so a partial wider than the terminal
        # is shown by its tail: the newest words are the ones worth watching.
        room = max(10, self._columns() - 1)
        if _width(text) > room:
            while _width(text) > room - 1:
                text = text[1:]
            text = "\u2026" + text
        styled = f"{self.DIM}{text}{self.RESET}" if self.dim else text
        self._emit(self.CLEAR_LINE + styled)
        self._partial_shown = bool(text)

    def clear(self) -> None:
        if self._partial_shown:
            self._emit(self.CLEAR_LINE)
            self._partial_shown = False

    def close(self) -> None:
        self.clear()
        super().close()


def make_sink(fmt: str, stream: TextIO, *, tty: bool, dim: bool = True, columns: Callable[[], int] | None = None) -> Sink:
    """The sink for ``--format``; raises ``ValueError`` for an unknown name."""
    if fmt == "live":
        return LiveSink(stream, tty=tty, dim=dim, columns=columns)
    simple = {"text": TextSink, "jsonl": JsonlSink, "srt": SrtSink, "vtt": VttSink}
    if fmt not in simple:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return simple[fmt](stream)
