"""scripts/demo_data.py: the training text the demo model learns from (text only, no synthesis).

The splits are cut to the frozen 3,000-word list (``demo_words.json``), which needs no
wordfreq (a ``train`` extra); the wide splits draw from wordfreq's ranks past it the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import demo_data  # noqa: E402

UNIFORM = dataclasses.replace(demo_data.TRAIN_WIDE, words=demo_data.TOP_WORDS)
FREQUENT = dataclasses.replace(demo_data.TRAIN_FREQUENT, words=demo_data.TOP_WORDS)
TEXTS = 400


def _words(split, language: str = "en") -> Counter:
    return Counter(w for seed in range(TEXTS) for w in demo_data.sample_text(seed, language, split).split())


def test_frequency_weighted_text_has_function_words_as_often_as_speech():
    """In speech "the", "of", "and" are among every few words; drawn uniformly they almost never come up."""
    top = set(demo_data.word_list("en")[:100])
    uniform, frequent = _words(UNIFORM), _words(FREQUENT)
    share = {name: sum(n for w, n in c.items() if w in top) / sum(c.values())
             for name, c in (("uniform", uniform), ("frequent", frequent))}
    assert share["frequent"] > 0.2 and share["uniform"] < 0.1, share
    assert frequent["the"] + frequent["of"] + frequent["and"] >= 40, frequent.most_common(10)
    # the tail still spreads wide: most of the list's words are drawn somewhere
    assert len(frequent) > 0.5 * len(uniform), (len(frequent), len(uniform))


@pytest.mark.parametrize("split", [demo_data.TRAIN, UNIFORM, FREQUENT], ids=lambda s: s.name)
def test_training_text_never_draws_a_heldout_word(split):
    """(The few templates' own words, "please call {w} at {n}", are fixed text, not draws.)"""
    for language in ("en", "de", "es"):
        fixed = {w for t in demo_data.TEMPLATES[language] for w in t.split()}
        held = set(demo_data.word_list(language, "heldout")) - fixed
        seen = set(_words(split, language))
        assert held and not held & seen, sorted(held & seen)[:10]


def test_the_same_seed_draws_the_same_text_and_other_seeds_differ():
    first = [demo_data.sample_text(seed, "fr", FREQUENT) for seed in range(20)]
    assert first == [demo_data.sample_text(seed, "fr", FREQUENT) for seed in range(20)]
    assert len(set(first)) == len(first)


def test_random_voices_are_new_speakers_that_never_use_a_heldout_setting():
    """Each draw is a different set of synthesizer settings, the same for the same seed; no
    draw uses the held-out Klatt mode 3; espeak-ng speaks with them, and differently from the
    plain voice and from each other."""
    import espeak_voices
    import numpy as np

    texts = [espeak_voices.random_variant(np.random.default_rng(seed)) for seed in range(200)]
    assert texts[:5] == [espeak_voices.random_variant(np.random.default_rng(seed)) for seed in range(5)]
    assert len(set(texts)) == 200
    assert not any("klatt 3" in t for t in texts)
    assert sum("klatt" in t for t in texts) > 10  # the other Klatt modes are drawn
    low_pitches = [int(t.split("\npitch ")[1].split()[0]) for t in texts]
    assert min(low_pitches) < 90 and max(low_pitches) > 190  # low and high voices alike
    # an equaliser curve in some, and in some a formant far from the rest of its vocal tract
    assert 40 < sum("\ntone " in t for t in texts) < 120
    firsts = [[int(line.split()[2]) for line in t.splitlines() if line.startswith("formant ")][1:6] for t in texts]
    assert sum(max(f) / min(f) > 1.35 for f in firsts) > 20 and sum(max(f) / min(f) < 1.15 for f in firsts) > 60
    said = [demo_data.synthesize("espeak", f"en-us+{espeak_voices.write_variant(t)}", "seven of hearts", 160, 50, 0)
            for t in texts[:2]]
    # each is removed once spoken: espeak-ng finds no voice at all in a folder of 350 files
    variants = Path(espeak_voices.data_path()) / "espeak-ng-data" / "voices" / "!v"
    assert not [p for p in variants.iterdir() if p.name.startswith(espeak_voices.PREFIX)]
    plain = demo_data.synthesize("espeak", "en-us", "seven of hearts", 160, 50, 0)
    for audio in said:
        assert 0.5 * 16000 < len(audio) < 3 * 16000 and np.abs(audio).max() > 0.05
    assert not any(len(a) == len(plain) and np.allclose(a, plain) for a in said)
    assert not (len(said[0]) == len(said[1]) and np.allclose(*said))


def test_voices_split_draws_random_voices_for_most_espeak_utterances_and_keeps_others_apart():
    """TRAIN_VOICES: about 60% of espeak draws are random voices; the other splits never draw one."""
    import numpy as np

    def voices(split, n=300):
        return [demo_data._voice(np.random.default_rng([seed, 0]), "de", split)[1] for seed in range(n)]

    share = sum("+rnd-" in v for v in voices(demo_data.TRAIN_VOICES)) / 300
    assert 0.5 < share < 0.7, share
    assert not any("+rnd-" in v for v in voices(demo_data.TRAIN_FREQUENT) + voices(demo_data.HELDOUT))


def test_a_test_set_numbers_each_language_and_reads_back_in_order(tmp_path):
    """write_test_set: the one writer of the layout eval_wer.py reads (demo_data, human_speech, kokoro_speech)."""
    import numpy as np
    from eval_wer import load_heldout

    tone = np.sin(np.arange(8000) / 5.0).astype(np.float32) * 0.3
    utts = [demo_data.Utterance(lang, text, tone, "test") for lang, text in
            [("en", "one"), ("fr", "deux"), ("en", "three")]]
    demo_data.write_test_set(tmp_path, utts)
    rows = load_heldout(tmp_path, "x-")
    assert [(r["audio"], r["set"], r["text"]) for r in rows] == [
        ("en_000.wav", "x-en", "one"), ("fr_000.wav", "x-fr", "deux"), ("en_001.wav", "x-en", "three")]
    assert np.allclose(rows[0]["wav"], tone, atol=1e-4)
