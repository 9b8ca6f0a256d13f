"""Subtitle documents (SubRip, WebVTT) from timed cues: one definition for every endpoint that
answers with subtitles. The libraries ``srt`` and ``webvtt-py`` write the formats."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

__all__ = ["Cue", "srt_document", "vtt_document", "vtt_time"]

Cue = tuple[float, float, str]  # start, end (seconds), text


def srt_document(cues: Sequence[Cue]) -> str:
    import srt

    return srt.compose([srt.Subtitle(i + 1, datetime.timedelta(seconds=a), datetime.timedelta(seconds=b), text)
                        for i, (a, b, text) in enumerate(cues)])


def vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def vtt_document(cues: Sequence[Cue]) -> str:
    import webvtt

    return webvtt.WebVTT(captions=[webvtt.Caption(start=vtt_time(a), end=vtt_time(b), text=text)
                                   for a, b, text in cues]).content
