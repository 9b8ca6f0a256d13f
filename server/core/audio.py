"""Audio in, arrays out: decoding, resampling and quiet-point splitting, with no I/O.

How this works
--------------
A client's binary frames go through :class:`PcmDecoder`, which turns raw little-endian
PCM bytes into float32 samples in [-1, 1]. Frames need not hold whole samples: the
decoder keeps the (at most ``sample_width - 1``) leftover bytes for the next frame.
:class:`StreamResampler` then converts the client's rate to the 16 kHz the VAD and the
model expect, using libsoxr's streaming resampler so that chunk boundaries leave no
clicks and content above the new Nyquist frequency is filtered out rather than aliased.

:func:`find_split_point` and :func:`split_long_audio` pick where to cut audio that is too
long for the model's window: at the quietest stretch (smoothed frame energy) within a
search range, so that a cut falls between words whenever there is a pause to find.
"""

from __future__ import annotations

import numpy as np
import soxr

from server.core.pcm import (
    SAMPLE_RATE,
    Encoding,
    s16_to_float,
)

__all__ = [
    "RAW_SUFFIXES",
    "TARGET_RATE",
    "BadAudio",
    "PcmDecoder",
    "StreamResampler",
    "decode_audio_file",
    "find_split_point",
    "resample",
    "soundfile_args",
    "split_long_audio",
]

TARGET_RATE = SAMPLE_RATE
# Headerless files: 16-bit little-endian mono PCM, as arecord -t raw, sox and pocketsphinx write them.
RAW_SUFFIXES = (".raw", ".pcm", ".s16")


def soundfile_args(path: str, raw_rate: int = TARGET_RATE) -> dict:
    """Keyword arguments for ``soundfile.SoundFile(path, **args)``.

    libsndfile reads a header for every format but RAW, which it must be told; a headerless
    file (``RAW_SUFFIXES``) is read as 16-bit little-endian mono at ``raw_rate``.
    """
    if str(path).lower().endswith(RAW_SUFFIXES):
        return {"samplerate": raw_rate, "channels": 1, "format": "RAW", "subtype": "PCM_16", "endian": "LITTLE"}
    return {}


def decode_audio_file(source, name: str, raw_rate: int = TARGET_RATE, max_seconds: float | None = None) -> np.ndarray:
    """An audio file's samples, downmixed to mono float32 at 16 kHz.

    ``source`` is a path or a binary file object (an upload); ``name`` picks headerless
    RAW reading by its suffix (:func:`soundfile_args`). Raises :class:`BadAudio` with one
    line saying why libsndfile could not read it, or that the file is longer than
    ``max_seconds`` (checked from its header, before anything is decoded). The CLI and the file endpoint both read
    through here, so the same file gives the same samples either way.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(source, **soundfile_args(name, raw_rate)) as f:
            rate = f.samplerate
            if max_seconds is not None and f.frames > max_seconds * rate:
                raise BadAudio(f"{name} is {f.frames / rate:.0f} s long, over the limit of {max_seconds:.0f} s")
            data = f.read(dtype="float32", always_2d=True)
    except BadAudio:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as exc:
        why = getattr(exc, "error_string", None) or str(exc)  # libsndfile's own words, without the object's repr
        raise BadAudio(f"cannot read {name}: {' '.join(why.split())}") from None
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise BadAudio(f"cannot read {name}: samples are not finite numbers")
    if rate != TARGET_RATE:
        mono = resample(mono, rate, TARGET_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


class BadAudio(ValueError):
    """A binary frame holds samples that cannot be audio (e.g. NaN in float PCM)."""


class PcmDecoder:
    """Decode a stream of raw PCM byte frames into float32 samples in [-1, 1].

    Args:
        encoding: the sample format the client declared.
    """

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = Encoding(encoding)
        self._width = self.encoding.sample_width
        self._dtype = np.dtype("<i2") if self.encoding is Encoding.PCM_S16LE else np.dtype("<f4")
        self._leftover = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete sample held back for the next frame (< one sample)."""
        return len(self._leftover)

    def feed(self, data: bytes) -> np.ndarray:
        """Decode one frame; returns the whole samples it completes (maybe none).

        Raises:
            BadAudio: float PCM with NaN or infinite samples. The frame's samples are
                dropped, but its bytes count as consumed, so the byte alignment of the
                stream (and so every later frame) stays correct.
        """
        buf = self._leftover + bytes(data) if self._leftover else bytes(data)
        usable = len(buf) - len(buf) % self._width
        # Commit the new leftover before validating: a bad frame is still consumed.
        self._leftover = buf[usable:]
        raw = np.frombuffer(buf, dtype=self._dtype, count=usable // self._width)
        if self._dtype.kind == "i":
            return s16_to_float(raw)
        finite = np.isfinite(raw)
        if not finite.all():
            bad = int(raw.size - np.count_nonzero(finite))
            raise BadAudio(
                f"{self.encoding.value} frame has {bad} non-finite sample(s) (NaN or inf) "
                f"out of {raw.size}; frame dropped"
            )
        return np.clip(raw, -1.0, 1.0).astype(np.float32, copy=False)


class StreamResampler:
    """Streaming mono resampler from the client's rate to 16 kHz (or ``out_rate``).

    libsoxr keeps filter state between chunks, so splitting a stream into chunks of any
    size gives the same output as resampling it whole (up to the last ``flush``).
    At 16 kHz input it passes samples through untouched.

    The one resampler of the project: sessions (client rate -> 16 kHz), the client (a
    device's native rate -> a rate the wire takes) and files (:func:`resample`) use it.

    Args:
        in_rate: the input rate in Hz (the wire protocols check their own ranges).
        out_rate: the rate to produce.
        quality: libsoxr quality recipe (``"HQ"`` is a steep linear-phase filter).

    Raises:
        ValueError: a rate that is not positive.
    """

    def __init__(self, in_rate: int, out_rate: int = TARGET_RATE, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got in_rate {in_rate}, out_rate {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        self._flushed = False

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk; output may lag input by the filter delay until flush.

        Raises:
            RuntimeError: called after :meth:`flush`.
        """
        if self._flushed:
            raise RuntimeError("StreamResampler.process() called after flush()")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=False)

    def flush(self) -> np.ndarray:
        """End the stream and return the samples still inside the filter."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def resample(audio: np.ndarray, in_rate: int, out_rate: int = TARGET_RATE) -> np.ndarray:
    """A whole signal from ``in_rate`` to ``out_rate`` (the same filter as the streaming path)."""
    stream = StreamResampler(in_rate, out_rate)
    out = stream.process(audio)
    tail = stream.flush()
    return np.concatenate([out, tail]) if len(tail) else out


def _smoothed_energy(x: np.ndarray, frame: int, smooth_frames: int) -> np.ndarray:
    """Mean-square energy per frame, averaged over ``smooth_frames`` neighbouring frames.

    Smoothing matters: a single quiet 20 ms frame can sit inside a word (a stop
    consonant's closure), whereas a quiet ~150 ms stretch is almost always a pause.
    """
    n = len(x) // frame
    energy = np.square(x[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    if smooth_frames <= 1 or n <= 1:
        return energy
    kernel = np.ones(min(smooth_frames, n))
    # Divide by the window's actual coverage so edge frames are not biased towards 0.
    return np.convolve(energy, kernel, mode="same") / np.convolve(np.ones(n), kernel, mode="same")


def find_split_point(
    audio: np.ndarray,
    sample_rate: int,
    lo: int,
    hi: int,
    frame_ms: int = 20,
    smooth_ms: int = 160,
) -> int:
    """The sample index in ``[lo, hi)`` at the centre of the quietest stretch.

    Frame energies are smoothed over ``smooth_ms``; the quietest frame is found, and if
    several neighbours are (nearly) as quiet, for example a pause of digital silence,
    the middle of that quiet run is returned rather than its edge next to a word.

    Args:
        audio: mono samples.
        sample_rate: of ``audio``.
        lo, hi: the search range, ``0 <= lo < hi <= len(audio)``.
        frame_ms: energy frame length.
        smooth_ms: length of the moving average over frame energies.

    Raises:
        ValueError: an empty or out-of-bounds range.
    """
    if not 0 <= lo < hi <= len(audio):
        raise ValueError(f"need 0 <= lo < hi <= {len(audio)}, got lo={lo}, hi={hi}")
    frame = max(1, sample_rate * frame_ms // 1000)
    if hi - lo < 2 * frame:
        return (lo + hi) // 2
    energy = _smoothed_energy(audio[lo:hi], frame, max(1, smooth_ms // frame_ms))
    best = int(np.argmin(energy))
    quiet = energy <= energy[best] * 1.05 + 1e-12
    first = best
    while first > 0 and quiet[first - 1]:
        first -= 1
    last = best
    while last + 1 < len(quiet) and quiet[last + 1]:
        last += 1
    centre = lo + ((first + last + 1) * frame) // 2
    return min(max(centre, lo), hi - 1)


def split_long_audio(
    audio: np.ndarray,
    sample_rate: int,
    max_seconds: float,
    search_seconds: float = 5.0,
) -> list[tuple[int, int]]:
    """Cut ``audio`` into contiguous chunks of at most ``max_seconds`` at quiet points.

    Each cut is placed by :func:`find_split_point` within the last ``search_seconds`` of
    the chunk, so a chunk is never shorter than ``max_seconds - search_seconds`` unless
    it is the last one.

    Returns:
        ``(start, end)`` sample ranges covering ``audio`` exactly, in order; empty for
        empty audio.

    Raises:
        ValueError: ``max_seconds`` or ``search_seconds`` not positive.
    """
    if max_seconds <= 0 or search_seconds <= 0:
        raise ValueError("max_seconds and search_seconds must be positive")
    max_len = max(1, int(max_seconds * sample_rate))
    search = max(1, min(int(search_seconds * sample_rate), max_len - 1))
    chunks: list[tuple[int, int]] = []
    start, total = 0, len(audio)
    while total - start > max_len:
        hi = start + max_len + 1  # a cut at start + max_len still keeps the chunk in bounds
        lo = max(start + 1, hi - 1 - search)
        cut = find_split_point(audio, sample_rate, lo, hi)
        chunks.append((start, cut))
        start = cut
    if total > start:
        chunks.append((start, total))
    return chunks
