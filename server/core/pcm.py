"""The one definition of dgasr's audio constants and the 16-bit PCM codec.

Every layer (wire protocol, segmenter, engine, clients) takes the model rate, the language
list and the s16 <-> float scaling from here, so they cannot drift apart: 16-bit samples
map to floats by dividing by 32768 and back by multiplying by 32768 (rounded, clipped to
the int16 range), so a decode-encode round trip is exact.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = [
    "LANGUAGES",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "S16_SCALE",
    "SAMPLE_RATE",
    "Encoding",
    "float_to_s16",
    "s16_to_float",
]

SAMPLE_RATE = 16000  # what the segmenter and every model work at
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "hi", "zh")
S16_SCALE = 1.0 / 32768.0
MIN_SAMPLE_RATE = 8000  # the input rates a stream may declare
MAX_SAMPLE_RATE = 48000


class Encoding(enum.StrEnum):
    """Raw audio sample formats a stream may declare."""

    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"

    @property
    def sample_width(self) -> int:
        return 2 if self is Encoding.PCM_S16LE else 4


def s16_to_float(raw: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1)."""
    return raw.astype(np.float32) * np.float32(S16_SCALE)


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> little-endian int16 (rounded, clipped)."""
    return np.clip(np.rint(samples.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
