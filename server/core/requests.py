"""Typed requests and results of the engine's batched draft/final API."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AudioTooLong", "EngineError", "InvalidRequest", "PhaseTimings", "TranscribeRequest", "TranscribeResult",
           "WordTiming"]


class EngineError(RuntimeError):
    """The engine could not run a batch (the worker thread survives)."""


class InvalidRequest(ValueError):
    """A request can never be served as given; the message says why."""


class AudioTooLong(InvalidRequest):
    """Audio exceeds the model's window; segmentation is the caller's job."""


@dataclass(frozen=True, eq=False)
class TranscribeRequest:
    """One transcription pass over one piece of audio.

    Args:
        audio: float32 mono samples at 16 kHz, at most the model's window.
        steps: number of denoising steps (drafts: 1-4, finals: ~16).
        language: ``en``/``de``/``fr``/``es``/``hi``/``zh`` hint, or None for automatic.
        seed: seeds this request's own RNG stream, so the result does not depend on what
            else shares the batch.
        start_canvas: warm start: the ``canvas`` of an earlier result (e.g. the last draft of
            the same, shorter audio); None starts from uniformly random tokens.
        word_timings: also align the result's words to the audio (finals ask for it).
    """

    audio: np.ndarray
    steps: int
    language: str | None = None
    seed: int = 0
    start_canvas: tuple[int, ...] | None = None
    word_timings: bool = False


@dataclass(frozen=True)
class PhaseTimings:
    """Milliseconds spent by the batch this result came from, per phase.

    ``decode_ms`` is the per-row work outside the batched passes: the CTC reading through
    the lexicon (cold starts of a ``canvas_start: "ctc"`` model) and the word alignment of
    finals. It follows the words in the audio, not the batch shape, so a cost measured on
    noise misses it (``scripts/costs.py``).
    """

    features_ms: float
    audio_encoder_ms: float
    prompt_encode_ms: float
    denoise_ms: float
    batch_size: int
    decode_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.features_ms + self.audio_encoder_ms + self.prompt_encode_ms + self.denoise_ms + self.decode_ms


@dataclass(frozen=True)
class WordTiming:
    """A word of a transcript and where it was said, in seconds from the start of its audio."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class TranscribeResult:
    text: str
    canvas: tuple[int, ...] = field(repr=False)
    steps: int
    timings: PhaseTimings
    words: tuple[WordTiming, ...] = ()
    # the request's hint, or without one the language the model heard (a lexicon model's search
    # picks it); None when neither is known (the real model does not say)
    language: str | None = None
