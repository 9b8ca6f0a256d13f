"""Real test audio: espeak-ng speech with known pauses, and pocketsphinx's human recordings.

``espeak`` runs the real ``espeak-ng`` binary and caches results in-process and on disk
(under ``$DGASR_TEST_AUDIO_CACHE`` or the system temp dir), keyed by the arguments and
the espeak-ng version, so repeated test runs do not re-synthesize.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "SAMPLE_RATE",
    "POCKETSPHINX_DATA",
    "espeak",
    "trim_silence",
    "noise",
    "speech_with_pauses",
    "pocketsphinx_raw",
    "librivox",
    "LIBRIVOX_IDS",
    "human_english",
]

SAMPLE_RATE = 16000
POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX_IDS = tuple(f"sense_and_sensibility_01_austen_64kb-{n:04d}" for n in (870, 880, 890, 920, 930))


@functools.lru_cache(maxsize=1)
def _espeak_version() -> str:
    return subprocess.run(
        ["espeak-ng", "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _cache_dir() -> Path:
    root = os.environ.get("DGASR_TEST_AUDIO_CACHE") or os.path.join(tempfile.gettempdir(), "dgasr-test-audio")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _readonly(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False  # cached arrays are shared between tests
    return x


@functools.lru_cache(maxsize=256)
def espeak(text: str, voice: str = "en", speed: int = 160, pitch: int = 50, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Synthesize ``text`` with espeak-ng; float32 mono at ``sample_rate`` (read-only)."""
    key = hashlib.sha1(repr((text, voice, speed, pitch, sample_rate, _espeak_version())).encode()).hexdigest()
    cached = _cache_dir() / f"espeak-{key}.npy"
    if cached.exists():
        return _readonly(np.load(cached))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    tmp_path = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp_path, audio)
    os.replace(tmp_path, cached)  # atomic, so parallel test runs never read half a file
    return _readonly(audio)


def trim_silence(x: np.ndarray, threshold_dbfs: float = -50.0, frame: int = 160) -> tuple[int, int]:
    """The ``(start, end)`` sample range from the first to the last frame above the threshold."""
    n = len(x) // frame
    rms = np.sqrt(np.square(x[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1))
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def noise(seconds: float, dbfs: float = -60.0, seed: int = 0) -> np.ndarray:
    """White noise with RMS at ``dbfs``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def speech_with_pauses(
    parts: list[str | float],
    voice: str = "en",
    noise_dbfs: float | None = -60.0,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate espeak sentences (``str``) and pauses (``float`` seconds).

    Each sentence is trimmed to its own non-silent extent first, so the returned
    ``(start_s, end_s)`` per sentence is where speech really is. Optional white noise at
    ``noise_dbfs`` over the whole signal keeps the "silences" from being digital zeros.
    """
    pieces: list[np.ndarray] = []
    truth: list[tuple[float, float]] = []
    offset = 0
    for part in parts:
        if isinstance(part, str):
            audio = espeak(part, voice=voice)
            lo, hi = trim_silence(audio)
            piece = audio[lo:hi]
            truth.append((offset / SAMPLE_RATE, (offset + len(piece)) / SAMPLE_RATE))
        else:
            piece = np.zeros(int(part * SAMPLE_RATE), dtype=np.float32)
        pieces.append(piece)
        offset += len(piece)
    out = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if noise_dbfs is not None:
        out = out + noise(len(out) / SAMPLE_RATE, noise_dbfs, seed)[: len(out)]
    return out.astype(np.float32), truth


@functools.lru_cache(maxsize=16)
def pocketsphinx_raw(name: str) -> np.ndarray:
    """A 16 kHz s16le mono recording from pocketsphinx-testdata, as float32 (read-only)."""
    raw = (POCKETSPHINX_DATA / name).read_bytes()
    return _readonly(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)


@functools.lru_cache(maxsize=8)
def librivox(file_id: str) -> np.ndarray:
    """A LibriVox sentence from pocketsphinx-testdata, float32 at 16 kHz (read-only)."""
    audio, rate = sf.read(POCKETSPHINX_DATA / "librivox" / f"{file_id}.wav", dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return _readonly(audio)


def _transcripts(path: Path) -> dict[str, str]:
    """``<s> words </s> (file id)`` lines -> {file id: words}."""
    out = {}
    for line in path.read_text().splitlines():
        if "(" in line:
            text, file_id = line.rsplit("(", 1)
            out[file_id.strip(" )")] = " ".join(text.replace("<s>", " ").replace("</s>", " ").split())
    return out


@functools.lru_cache(maxsize=1)
def human_english() -> tuple[tuple[str, np.ndarray, str], ...]:
    """Every pocketsphinx-testdata recording that comes with a transcript: (name, audio, text).

    Real people, not synthesis: five LibriVox sentences, five spoken card names, "go
    forward ten meters" and a TIDIGITS digit string (12 clips, about 40 s).
    """
    clips = [(f, librivox(f), t) for f, t in _transcripts(POCKETSPHINX_DATA / "librivox" / "transcription").items()]
    for file_id, text in _transcripts(POCKETSPHINX_DATA / "cards" / "cards.transcription").items():
        audio, rate = sf.read(POCKETSPHINX_DATA / "cards" / f"{file_id}.wav", dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), rate, SAMPLE_RATE) if rate != SAMPLE_RATE else audio.mean(axis=1)
        clips.append((f"cards-{file_id}", _readonly(audio.astype(np.float32)), text))
    clips.append(("goforward", pocketsphinx_raw("goforward.raw"), "go forward ten meters"))
    clips.append(("tidigits-2934z", pocketsphinx_raw("tidigits/dhd.2934z.raw"), "two nine three four zero"))
    return tuple(clips)
