"""The segmenter: 16 kHz samples in, speech-segment events out, with no I/O.

How this works
--------------
Audio is cut into fixed frames (``frame_ms``) on a grid that starts at the stream's
first sample, and each frame is classified voiced/unvoiced by WebRTC's VAD. Because the
grid never depends on how the caller chunks its ``feed`` calls, any chunking gives the
same segments.

* ``SILENCE`` / ``MAYBE_SPEECH``: no open segment. Recent audio is kept in a bounded
  pre-roll buffer. A segment is *confirmed* only when the last ``start_window_ms`` of
  frames hold enough voiced frames (``start_ratio``, and at least ``min_speech_ms`` of
  them). Until then nothing is announced, so clicks and other blips never produce a
  ``SegmentStarted``, and once a segment is announced it always gets its
  ``SegmentEnded``. The segment then starts ``preroll_ms`` before the utterance's first
  voiced frame (looking back past pauses shorter than ``silence_ms``, as far as
  ``onset_ms`` before the start window), so the first syllable is kept despite the
  confirmation delay, and so are the first words of a soft or breathy voice whose
  voicing comes in bursts too short to confirm a segment for seconds.
* ``SPEECH`` / ``TRAILING_SILENCE``: a segment is open. Its audio is emitted as
  ``SegmentAudio`` up to the end of the last voiced frame; unvoiced audio after it is
  held back, because it either turns out to be a pause inside the segment (emitted
  when speech resumes) or the segment's end. After ``silence_ms`` without a voiced
  frame the segment ends ``tail_ms`` after its last voiced frame.
* A segment never grows beyond ``max_segment_s`` (the model's window). Before it would,
  it is cut at the quietest point of its last ``split_search_s`` and the next segment
  starts at that very sample (``FORCED_SPLIT``). To make that possible, the audio of
  that search zone is held back until the cut is known; nothing is lost or duplicated.
* ``finalize()`` ends the open segment now (the stream goes on); ``close()`` ends it
  for good (``CLOSED``: any further call raises :class:`SegmenterError`).

All positions are absolute sample indices in the 16 kHz stream. Every buffer is bounded:
the pre-roll history by ``preroll_ms + max(silence_ms, onset_ms) + start_window_ms``, the open segment
by ``max_segment_s``. Each ``feed`` merges adjacent audio of a segment into one
``SegmentAudio``, so only the audio events' sizes depend on the caller's chunking.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque

import numpy as np
import webrtcvad

from server.core.audio import find_split_point
from server.core.pcm import SAMPLE_RATE, float_to_s16
from server.core.segments import (
    EndReason,
    EventCollector,
    SegmentAudio,
    SegmentEnded,
    SegmentEvent,
    SegmentStarted,
)
from server.core.vad_config import VadConfig

__all__ = [
    "EndReason",
    "SegmentAudio",
    "SegmentEnded",
    "SegmentEvent",
    "SegmentStarted",
    "Segmenter",
    "SegmenterError",
    "SegmenterState",
]


class SegmenterState(enum.Enum):
    SILENCE = "silence"
    MAYBE_SPEECH = "maybe_speech"
    SPEECH = "speech"
    TRAILING_SILENCE = "trailing_silence"
    CLOSED = "closed"


_OPEN = (SegmenterState.SPEECH, SegmenterState.TRAILING_SILENCE)


class SegmenterError(RuntimeError):
    """A call that is not allowed in the segmenter's current state."""


class Segmenter:
    """Turns a 16 kHz mono float32 stream into speech segments (see module docstring)."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = cfg = config or VadConfig()
        self._vad = webrtcvad.Vad(cfg.aggressiveness)
        self._energies: deque[float] = deque(maxlen=max(1, round(1000 * cfg.noise_window_s / cfg.frame_ms)))
        self._frame = cfg.samples(cfg.frame_ms)
        self._window_frames = window_frames = max(1, cfg.start_window_ms // cfg.frame_ms)
        self._confirm_frames = max(
            math.ceil(cfg.start_ratio * window_frames), math.ceil(cfg.min_speech_ms / cfg.frame_ms)
        )
        self._preroll = cfg.samples(cfg.preroll_ms)
        self._tail_len = cfg.samples(cfg.tail_ms)
        self._silence_len = cfg.samples(cfg.silence_ms)
        self._max_len = cfg.samples(1000 * cfg.max_segment_s)
        self._search_len = cfg.samples(1000 * cfg.split_search_s)
        # Audio beyond this offset in a segment is held back until a forced split places it.
        self._hold_from = self._max_len - self._search_len - self._frame
        self._history_cap = cfg.history_samples()

        self._state = SegmenterState.SILENCE
        self._pending = np.zeros(0, dtype=np.float32)  # < one frame, not yet classified
        self._pos = 0  # absolute index just past the last classified sample
        # (voiced, start) of recent frames, as far back as the history reaches.
        self._flags: deque[tuple[bool, int]] = deque(maxlen=self._history_cap // self._frame)
        self._history = np.zeros(0, dtype=np.float32)  # unsegmented audio ending at _pos
        self._floor = 0  # a new segment may not start before the previous one's end
        self._next_segment = 0
        self._seg = np.zeros(self._max_len, dtype=np.float32)
        self._seg_start = self._seg_len = self._emitted = self._voiced_end = 0

    # ---- public API -----------------------------------------------------------

    @property
    def state(self) -> SegmenterState:
        return self._state

    @property
    def open_segment(self) -> int | None:
        """The number of the announced, not yet ended segment, if any."""
        return self._next_segment - 1 if self._state in _OPEN else None

    def ending_audio(self) -> np.ndarray:
        """What the open segment would end with, beyond the audio already emitted, if the
        pause it is in ended it now: up to ``tail_ms`` after its last voiced frame (a copy;
        empty outside ``TRAILING_SILENCE``). A draft at a pause adds it, so it hears the end of
        the last word as the final will: without it "standard" was read "stande"."""
        if self._state is not SegmenterState.TRAILING_SILENCE:
            return np.zeros(0, dtype=np.float32)
        return self._seg[self._emitted : min(self._voiced_end + self._tail_len, self._seg_len)].copy()

    @property
    def position(self) -> int:
        """Samples received so far (including a not yet classified partial frame)."""
        return self._pos + len(self._pending)

    def feed(self, samples: np.ndarray) -> list[SegmentEvent]:
        """Add 16 kHz mono samples (any length) and return the events they complete.

        Raises:
            SegmenterError: after :meth:`close`.
            ValueError: ``samples`` is not one-dimensional.
        """
        self._require_not_closed("feed")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
        buf = np.concatenate((self._pending, x)) if len(self._pending) else x
        out = EventCollector()
        n = len(buf) // self._frame
        for i in range(n):
            self._process_frame(buf[i * self._frame : (i + 1) * self._frame], out)
        self._pending = buf[n * self._frame :].copy()
        return out.done()

    def set_silence_ms(self, silence_ms: int) -> None:
        """Change the pause that ends a segment, mid-stream (a protocol's turn-detection update).

        Fitted by :meth:`VadConfig.fit_silence_ms`; the pre-roll history grows or
        shrinks with it, keeping the newest audio.
        """
        cfg = self.config = dataclasses.replace(self.config, silence_ms=self.config.fit_silence_ms(silence_ms))
        self._silence_len = cfg.samples(cfg.silence_ms)
        self._history_cap = cfg.history_samples()
        self._flags = deque(self._flags, maxlen=self._history_cap // self._frame)
        self._history = self._history[-self._history_cap :]

    def finalize(self) -> list[SegmentEvent]:
        """End the open segment now (e.g. on a client ``finalize``); the stream goes on.

        Returns no events when no segment is open: an unconfirmed blip stays unconfirmed.

        Raises:
            SegmenterError: after :meth:`close`.
        """
        self._require_not_closed("finalize")
        return self._end_now(EndReason.FINALIZE)

    def close(self) -> list[SegmentEvent]:
        """End of stream: end the open segment, if any; later calls raise.

        Raises:
            SegmenterError: already closed.
        """
        self._require_not_closed("close")
        events = self._end_now(EndReason.END_OF_STREAM)
        self._state = SegmenterState.CLOSED
        self._seg = self._history = self._pending = np.zeros(0, dtype=np.float32)
        return events

    # ---- per-frame state machine ------------------------------------------------

    def _require_not_closed(self, action: str) -> None:
        if self._state is SegmenterState.CLOSED:
            raise SegmenterError(f"cannot {action}() in state {self._state.name}")

    def _is_voiced(self, frame: np.ndarray) -> bool:
        """webrtcvad's verdict, vetoed when the frame is not above the recent noise floor.

        webrtcvad adapts its noise model only on frames it already calls noise, so when
        the background gets louder (a fan starts, a client switches from digital zeros
        to a live mic) it can call the new noise speech indefinitely and a segment never
        ends. The floor here is the quietest frame of the last ``noise_window_s``, which
        catches up with any such jump within that window; speech sits well above it.

        A frame that is partly digital zeros (samples that quantize to 0) enters the floor
        with the energy of its other samples: the zeros are no signal, not a quieter
        background. A browser microphone that opens with a few milliseconds of zeros made
        one frame of -78 dB the floor for 1.5 s, the -60 dB room noise after it passed the
        gate, and webrtcvad called some of it speech, so the first segment started at the
        stream's first sample instead of 0.3 s before the first word. A frame of nothing
        but zeros keeps its own (lowest) energy: in clean audio with digitally silent pauses
        the gate then stands aside and webrtcvad alone decides, as it always has there.
        """
        pcm = float_to_s16(frame)
        speech = self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE)  # always: it keeps state
        energy_db = 10.0 * math.log10(float(np.dot(frame, frame)) / len(frame) + 1e-10)
        signal = np.count_nonzero(pcm)
        heard = energy_db if signal in (0, len(pcm)) else energy_db + 10.0 * math.log10(len(pcm) / signal)
        self._energies.append(heard)
        return speech and energy_db >= min(self._energies) + self.config.energy_gate_db

    def _process_frame(self, frame: np.ndarray, out: EventCollector) -> None:
        if self._state in _OPEN and self._seg_len + len(frame) > self._max_len:
            self._forced_split(out)  # may end the segment if the speech had paused
        voiced = self._is_voiced(frame)
        self._flags.append((voiced, self._pos))
        self._pos += len(frame)
        if self._state in _OPEN:
            self._extend_segment(frame, voiced, out)
        else:
            self._history = np.concatenate((self._history, frame))[-self._history_cap :]
            self._maybe_start(out)

    def _maybe_start(self, out: EventCollector) -> None:
        """Open a segment once the start window holds enough voiced frames."""
        window = list(self._flags)[-self._window_frames :]
        onset = self._onset()
        if onset is None:
            self._state = SegmenterState.SILENCE
            return
        self._state = SegmenterState.MAYBE_SPEECH
        if sum(voiced for voiced, _ in window) < self._confirm_frames:
            return
        history_start = self._pos - len(self._history)
        start = max(onset - self._preroll, history_start, self._floor)
        audio = self._history[start - history_start :]
        self._history = np.zeros(0, dtype=np.float32)
        self._seg[: len(audio)] = audio
        self._seg_start, self._seg_len, self._emitted = start, len(audio), 0
        last_voiced = max(s for voiced, s in window if voiced)
        self._voiced_end = last_voiced + self._frame - start
        is_voiced = window[-1][0]
        self._state = SegmenterState.SPEECH if is_voiced else SegmenterState.TRAILING_SILENCE
        out.add(SegmentStarted(self._next_segment, start))
        self._next_segment += 1
        self._emit_ready(out)

    def _onset(self) -> int | None:
        """Start of the utterance's first voiced frame, or None if it has been silent.

        Walks back over the remembered frames: voiced frames separated by pauses shorter
        than ``silence_ms`` belong to the same utterance (they would not end a segment
        either), so a short word before a short pause ("So, ...") is not cut off.
        """
        onset, gap = None, 0
        for voiced, start in reversed(self._flags):
            if voiced:
                onset, gap = start, 0
            else:
                gap += self._frame
                if gap >= self._silence_len:
                    break
        return onset

    def _extend_segment(self, frame: np.ndarray, voiced: bool, out: EventCollector) -> None:
        self._seg[self._seg_len : self._seg_len + len(frame)] = frame
        self._seg_len += len(frame)
        if voiced:
            self._voiced_end = self._seg_len
            self._state = SegmenterState.SPEECH
        else:
            self._state = SegmenterState.TRAILING_SILENCE
            if self._seg_len - self._voiced_end >= self._silence_len:
                end = min(self._voiced_end + self._tail_len, self._seg_len)
                self._end_segment(end, EndReason.SILENCE, out)
                return
        self._emit_ready(out)

    def _emit_ready(self, out: EventCollector) -> None:
        """Emit audio up to the last voiced frame, except the forced-split search zone."""
        limit = min(self._voiced_end, self._hold_from, self._seg_len)
        if limit > self._emitted:
            out.audio(self._next_segment - 1, self._seg[self._emitted : limit])
            self._emitted = limit

    def _end_segment(self, end: int, reason: EndReason, out: EventCollector) -> None:
        """End the open segment at offset ``end``; the rest becomes pre-roll history."""
        segment = self._next_segment - 1
        out.audio(segment, self._seg[self._emitted : end])
        out.add(SegmentEnded(segment, self._seg_start + end, reason))
        self._history = self._seg[end : self._seg_len][-self._history_cap :].copy()
        self._floor = self._seg_start + end
        # The next segment must be confirmed by its own frames, not by this one's.
        self._flags.clear()
        self._seg_len = self._emitted = self._voiced_end = 0
        self._state = SegmenterState.SILENCE

    def _forced_split(self, out: EventCollector) -> None:
        """Cut a full segment at its quietest recent point; continue if speech goes on."""
        lo = max(self._emitted, self._seg_len - self._search_len)
        cut = find_split_point(self._seg, SAMPLE_RATE, lo, self._seg_len) if lo < self._seg_len else lo
        if cut >= self._voiced_end:
            # Nothing voiced after the cut: the speaker had paused, so this is a normal end.
            self._end_segment(cut, EndReason.SILENCE, out)
            return
        segment = self._next_segment - 1
        out.audio(segment, self._seg[self._emitted : cut])
        start = self._seg_start + cut
        out.add(SegmentEnded(segment, start, EndReason.FORCED_SPLIT))
        out.add(SegmentStarted(segment + 1, start))
        self._next_segment += 1
        rest = self._seg_len - cut
        self._seg[:rest] = self._seg[cut : self._seg_len].copy()
        self._seg_start, self._seg_len, self._emitted = start, rest, 0
        self._voiced_end -= cut
        self._emit_ready(out)

    def _end_now(self, reason: EndReason) -> list[SegmentEvent]:
        out = EventCollector()
        if self._state not in _OPEN:
            return out.done()
        end = min(self._voiced_end + self._tail_len, self._seg_len)
        if self._state is SegmenterState.SPEECH:
            # Speech runs to the last sample: the unclassified partial frame belongs to it.
            room = self._max_len - self._seg_len
            take = self._pending[:room]
            self._seg[self._seg_len : self._seg_len + len(take)] = take
            self._seg_len += len(take)
            self._pos += len(take)
            self._pending = self._pending[len(take) :].copy()
            end = self._seg_len
        self._end_segment(end, reason, out)
        return out.done()
