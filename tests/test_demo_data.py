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
