"""Synthetic six-language speech for the embedded ``demo`` model, deterministic from a seed.

How this works
--------------
Text: random sequences of the ``TOP_WORDS`` most frequent words of each language
(``wordfreq``; words outside the language's script dropped), sometimes a small number or
a short templated sentence. Speech: ``espeak-ng`` (``-v cmn`` for Mandarin) with a voice
variant, speed, pitch and word gap drawn from the seed, resampled to 16 kHz. Augmentation:
gain, background noise (white/pink/brown) at a random SNR, a simple synthetic reverb, and
random leading/trailing silence. Every draw comes from ``numpy.random.default_rng(seed)``.

The held-out split uses voice variants and a speed band that training never draws, and
its own seeds (see ``TRAIN`` / ``HELDOUT``)::

    python scripts/demo_data.py --out out/demo_heldout --per-language 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

__all__ = ["LANGS", "TOP_WORDS", "Split", "TRAIN", "HELDOUT", "Utterance", "word_list", "charset", "sample_text", "synthesize", "sample_utterance"]

LANGS = ("en", "de", "fr", "es", "hi", "zh")
TOP_WORDS = 300
SAMPLE_RATE = 16000
MAX_SECONDS = 3.8  # audio (with silences) must fit the model's 4 s window
MAX_CHARS = 64  # a transcript this long is far more than the canvas's 32 subword tokens would allow in 3.8 s anyway

_VOICES = {
    "en": ("en-us", "en-gb", "en-gb-x-rp"),
    "de": ("de",),
    "fr": ("fr-fr", "fr-be"),
    "es": ("es", "es-419"),
    "hi": ("hi",),
    "zh": ("cmn",),
}
_LATIN = set("abcdefghijklmnopqrstuvwxyz")
_SCRIPT = {
    "en": _LATIN,
    "de": _LATIN | set("äöüß"),
    "fr": _LATIN | set("àâæçéèêëîïôœùûüÿ"),
    "es": _LATIN | set("áéíñóúü"),
}
_ONE_LETTER = {"en": {"a", "i"}, "de": set(), "fr": {"a", "à", "y"}, "es": {"a", "y", "o", "e", "u"}}
_TEMPLATES = {
    "en": ["i have {n} {w}", "the {w} is here", "where is the {w}", "this is my {w}"],
    "de": ["ich habe {n} {w}", "das ist ein {w}", "wo ist der {w}"],
    "fr": ["j'ai {n} {w}", "c'est un {w}", "où est le {w}"],
    "es": ["tengo {n} {w}", "esto es un {w}", "dónde está el {w}"],
    "hi": ["मेरे पास {n} {w} है", "यह {w} है"],
    "zh": ["我有{n}个{w}", "这是{w}"],
}


@dataclass(frozen=True)
class Split:
    """Which voice variants and speeds (words per minute) a split draws from."""

    variants: tuple[str, ...]
    speeds: tuple[tuple[int, int], ...]


TRAIN = Split(variants=("", "m1", "m2", "m4", "m5", "m7", "f1", "f2", "f4"), speeds=((130, 158), (168, 200)))
HELDOUT = Split(variants=("m3", "f3", "m6", "f5"), speeds=((158, 168),))


@dataclass(frozen=True)
class Utterance:
    language: str
    text: str
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    voice: str
    speed: int


def _in_script(language: str, word: str) -> bool:
    if language == "hi":
        return all(0x0900 <= ord(c) <= 0x097F for c in word)
    if language == "zh":
        return all(0x4E00 <= ord(c) <= 0x9FFF for c in word)
    if len(word) == 1 and word not in _ONE_LETTER[language]:
        return False
    return all(c in _SCRIPT[language] for c in word)


WORDS_FILE = Path(__file__).with_name("demo_words.json")


@lru_cache(maxsize=None)
def word_list(language: str) -> tuple[str, ...]:
    """The ``TOP_WORDS`` most frequent in-script words of ``language``, from ``demo_words.json``.

    Frozen in the repository (``--write-words`` regenerates it from wordfreq), so the data
    does not change with the wordfreq release and synthesis needs no wordfreq.
    """
    return tuple(json.loads(WORDS_FILE.read_text(encoding="utf-8"))[language])


def _wordfreq_list(language: str) -> list[str]:
    from wordfreq import top_n_list

    words = [unicodedata.normalize("NFC", w) for w in top_n_list(language, TOP_WORDS * 3)]
    return [w for w in words if _in_script(language, w)][:TOP_WORDS]


def charset() -> str:
    """Every character the demo transcripts can contain (sorted, deterministic)."""
    chars: set[str] = set(" 0123456789'")
    for language in LANGS:
        for word in word_list(language):
            chars.update(word)
        for template in _TEMPLATES[language]:
            chars.update(template.replace("{n}", "").replace("{w}", ""))
    return "".join(sorted(chars))


def _text(rng: np.random.Generator, language: str) -> str:
    words = word_list(language)
    roll = rng.random()
    if roll < 0.12:
        template = _TEMPLATES[language][rng.integers(len(_TEMPLATES[language]))]
        return template.format(n=int(rng.integers(2, 20)), w=words[rng.integers(len(words))])
    count = int(rng.integers(1, 8 if language != "zh" else 6))
    picked = [words[i] for i in rng.integers(0, len(words), count)]
    if roll < 0.2:
        picked.insert(int(rng.integers(0, count + 1)), str(int(rng.integers(0, 100))))
    return ("" if language == "zh" else " ").join(picked)


def sample_text(seed: int, language: str) -> str:
    """A transcript as :func:`sample_utterance` would draw it, without synthesis (tokenizer training)."""
    return _text(np.random.default_rng([seed, LANGS.index(language)]), language)


def synthesize(text: str, voice: str, speed: int, pitch: int, gap: int) -> np.ndarray:
    """espeak-ng -> float32 mono at 16 kHz."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    # espeak-ng writes a 44-byte WAV header then 16-bit mono PCM at 22050 Hz
    pcm = np.frombuffer(out[44:], dtype="<i2").astype(np.float32) / 32768.0
    return soxr.resample(pcm, 22050, SAMPLE_RATE).astype(np.float32)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.arange(spectrum.shape[0]), 1)
    spectrum = spectrum / (np.sqrt(freqs) if kind == 1 else freqs)
    noise = np.fft.irfft(spectrum, n).astype(np.float32)
    return noise / (noise.std() + 1e-8)


def augment(rng: np.random.Generator, audio: np.ndarray, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Reverb, silences, noise at a random SNR and a random gain."""
    if rng.random() < 0.3:
        length = int(SAMPLE_RATE * rng.uniform(0.05, 0.3))
        impulse = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / rng.uniform(3, 8)))
        impulse[0] = 1.0 / rng.uniform(0.3, 1.0)
        audio = np.convolve(audio, impulse / np.abs(impulse).sum() * 2)[: audio.shape[0]].astype(np.float32)
    room = max(0, int(max_seconds * SAMPLE_RATE) - audio.shape[0])
    lead = int(rng.integers(0, min(room, int(0.5 * SAMPLE_RATE)) + 1))
    trail = int(rng.integers(0, min(room - lead, int(0.5 * SAMPLE_RATE)) + 1))
    audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(trail, np.float32)])
    peak = np.abs(audio).max() + 1e-8
    audio = audio / peak * rng.uniform(0.1, 0.9)
    if rng.random() < 0.8:
        snr = rng.uniform(5, 40)
        power = float(np.mean(audio**2)) + 1e-10
        audio = audio + _noise(rng, audio.shape[0]) * np.sqrt(power / 10 ** (snr / 10))
    return np.clip(audio, -1, 1).astype(np.float32)


def sample_utterance(seed: int, language: str, split: Split = TRAIN, max_seconds: float = MAX_SECONDS) -> Utterance:
    """One utterance of ``language`` drawn entirely from ``seed`` (retries until it fits)."""
    rng = np.random.default_rng([seed, LANGS.index(language)])
    for _ in range(20):
        text = _text(rng, language)
        if len(text) > MAX_CHARS:
            continue
        base = _VOICES[language][rng.integers(len(_VOICES[language]))]
        variant = split.variants[rng.integers(len(split.variants))]
        voice = f"{base}+{variant}" if variant else base
        low, high = split.speeds[rng.integers(len(split.speeds))]
        speed = int(rng.integers(low, high))
        audio = synthesize(text, voice, speed, int(rng.integers(30, 71)), int(rng.integers(0, 4)))
        if audio.shape[0] <= (max_seconds - 0.1) * SAMPLE_RATE:
            return Utterance(language, text, augment(rng, audio, max_seconds), voice, speed)
    raise RuntimeError(f"no utterance of {language} fits {max_seconds} s for seed {seed}")


HELDOUT_SEED = 1_000_000


def heldout(per_language: int, seed: int = HELDOUT_SEED) -> list[Utterance]:
    """The held-out test utterances (held-out voices, speeds and seeds), in a fixed order."""
    return [sample_utterance(seed + i, lang, HELDOUT) for lang in LANGS for i in range(per_language)]


def main() -> None:
    import soundfile as sf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo_heldout"))
    parser.add_argument("--per-language", type=int, default=40)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--write-words", action="store_true", help=f"only (re)write {WORDS_FILE.name} from wordfreq")
    args = parser.parse_args()
    if args.write_words:
        lists = {lang: _wordfreq_list(lang) for lang in LANGS}
        WORDS_FILE.write_text(json.dumps(lists, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"wrote {WORDS_FILE}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "transcripts.jsonl", "w") as index:
        for lang in LANGS:
            for i in range(args.per_language):
                utt = sample_utterance(args.seed + i, lang, HELDOUT)
                name = f"{lang}_{i:03d}.wav"
                sf.write(args.out / name, utt.audio, SAMPLE_RATE, subtype="PCM_16")
                row = {"audio": name, "language": lang, "text": utt.text, "voice": utt.voice, "speed": utt.speed}
                index.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.per_language * len(LANGS)} utterances to {args.out}")


if __name__ == "__main__":
    main()
