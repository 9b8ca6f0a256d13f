"""The segmenter's settings, checked when made (:class:`VadConfig`), and the pause lengths
clients may ask for. Apart from :mod:`server.core.vad` so that the service and the wire
codecs read them without the segmenter's state machine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.core.pcm import SAMPLE_RATE

__all__ = ["ENDLESS_SILENCE_MS", "SHORTEST_CLIENT_SILENCE_MS", "VadConfig"]

SHORTEST_CLIENT_SILENCE_MS = 100
ENDLESS_SILENCE_MS = 3_600_000  # "no endpointing": segments end on finalize, end of stream or the window


@dataclass(frozen=True)
class VadConfig:
    """Segmenter tuning. Durations are in milliseconds unless the name says seconds.

    ``min_speech_ms`` counts voiced *frames* in the start window; webrtcvad keeps
    flagging ~100 ms after a sound stops, so 250 ms rejects sounds of ~100 ms (clicks,
    beeps) while a short word like "hi" passes. ``energy_gate_db`` (0 disables) and
    ``noise_window_s`` set the noise-floor gate described at :meth:`Segmenter._is_voiced`.
    ``max_segment_s`` should be the model's audio window minus a margin; the server sets
    it from the model (30 s window: 29 s).

    ``onset_ms``: how far before the start window the utterance's first voiced frame is
    looked for. A whispery espeak voice (the demo's held-out English utterance 23) was
    voiced in bursts of 60-180 ms for 1.7 s before 9 of 10 frames were, and with the
    history bounded by one pause the segment started 1.2 s late and its first three words
    were lost; 2 s keeps them. Noise a segment would take in with it is what webrtcvad
    called speech, chained by pauses shorter than ``silence_ms``.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    start_window_ms: int = 300
    start_ratio: float = 0.6
    min_speech_ms: int = 250
    silence_ms: int = 600
    preroll_ms: int = 300
    tail_ms: int = 200
    onset_ms: int = 2000
    energy_gate_db: float = 6.0
    noise_window_s: float = 1.5
    max_segment_s: float = 29.0
    split_search_s: float = 3.0

    def __post_init__(self) -> None:
        checks = [
            (self.aggressiveness in (0, 1, 2, 3), "aggressiveness must be 0..3"),
            (self.frame_ms in (10, 20, 30), "frame_ms must be 10, 20 or 30 (webrtcvad)"),
            (0.0 < self.start_ratio <= 1.0, "start_ratio must be in (0, 1]"),
            (self.frame_ms <= self.min_speech_ms, "min_speech_ms must be >= frame_ms"),
            (
                math.ceil(self.min_speech_ms / max(self.frame_ms, 1)) <= self.start_window_ms // max(self.frame_ms, 1),
                "min_speech_ms needs more frames than start_window_ms holds",
            ),
            (self.silence_ms >= self.frame_ms, "silence_ms must be >= frame_ms"),
            (self.preroll_ms >= 0 and self.tail_ms >= 0, "preroll_ms and tail_ms must be >= 0"),
            (self.onset_ms >= 0, "onset_ms must be >= 0"),
            (self.energy_gate_db >= 0, "energy_gate_db must be >= 0"),
            (self.noise_window_s * 1000 >= self.frame_ms, "noise_window_s must hold a frame"),
            (self.split_search_s > 0, "split_search_s must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")
        # A new segment (at most the whole pre-roll history) plus the split zone must fit.
        needed = self.preroll_ms + self.silence_ms + self.start_window_ms + 3 * self.frame_ms
        needed = needed / 1000 + self.split_search_s
        if self.max_segment_s < needed:
            raise ValueError(f"max_segment_s must be at least {needed:.2f} s with these settings; got {self}")

    def samples(self, ms: float) -> int:
        return int(round(ms * SAMPLE_RATE / 1000))

    def history_samples(self) -> int:
        """The pre-roll history a segmenter keeps: enough to look back over an utterance's
        onset (:meth:`Segmenter._onset`: a pause, or ``onset_ms`` of intermittent voicing,
        before the start window, as much of it as a segment has room for) plus the pre-roll."""
        frames = self.start_window_ms // self.frame_ms + 1
        onset = min(self.onset_ms, self.longest_silence_ms)  # a new segment must still fit (short windows)
        return self.samples(self.preroll_ms + max(self.silence_ms, onset) + frames * self.frame_ms)

    @property
    def longest_silence_ms(self) -> int:
        """The longest ``silence_ms`` these settings allow: a pause that long never ends a
        segment before ``max_segment_s`` does ("no endpointing" in the protocols that offer it)."""
        return (int((self.max_segment_s - self.split_search_s) * 1000) - self.preroll_ms - self.start_window_ms
                - 3 * self.frame_ms)

    def fit_silence_ms(self, silence_ms: int) -> int:
        """A client's pause length made valid here: at least ``SHORTEST_CLIENT_SILENCE_MS``
        (webrtcvad decides per 10-30 ms frame; a shorter pause would split at every
        consonant), at most :attr:`longest_silence_ms` (``ENDLESS_SILENCE_MS`` lands there)."""
        return max(SHORTEST_CLIENT_SILENCE_MS, min(silence_ms, self.longest_silence_ms))
