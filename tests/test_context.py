"""Word pairs in the lexicon search: the word before chooses among words said alike, and
the pairs are counted on running text that the held-out sentences never come from."""

from __future__ import annotations

import json
import lzma
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from server.engine.lexicon import LEXICON_DIR, PHONES_FILE, WEIGHTS_FILE, LexiconDecoding, LexiconWeights
from server.engine.tiny import build_char_tokenizer
from server.engine.wordlm import CONTEXT_SUFFIX, SENTENCE_START, read_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_context  # noqa: E402
from test_lexicon import phone_emissions  # noqa: E402

PHONES = ["<blank>", "|", "ð", "ə", "n", "aɪ", "t", "s", "b", "r", "eɪ", "v"]
SAID = {"the": ("ð ə", -1.0), "night": ("n aɪ t", -3.0), "knight": ("n aɪ t", -6.0), "brave": ("b r eɪ v", -5.0),
        "nice": ("n aɪ s", -5.0)}


def _said(text: str) -> np.ndarray:
    return phone_emissions(text, PHONES)


def _lexicon(folder: Path, pairs: list[str]) -> LexiconDecoding:
    folder.mkdir(exist_ok=True)
    (folder / "en.tsv").write_text("".join(f"{w}\t{p}\t{said}\n" for w, (said, p) in SAID.items()))
    (folder / PHONES_FILE).write_text(json.dumps(PHONES))
    (folder / f"en{CONTEXT_SUFFIX}").write_bytes(lzma.compress(("\n".join(pairs) + "\n").encode()))
    return LexiconDecoding.from_dir(folder, build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz ")), 0)


def test_the_word_before_chooses_between_words_said_alike(tmp_path):
    """"n aɪ t" is "night" by frequency alone, at the start and after "the"; after "brave" the
    pairs say "knight". Weight 0 in weights.json is the unigram again, and the context file is
    not mistaken for a second English lexicon."""
    pairs = [f"{SENTENCE_START}\t-1.0\t", "brave\t-3.0\tknight -0.5", "the\t-1.0\t"]
    decoding = _lexicon(tmp_path / LEXICON_DIR, pairs)
    tokenizer = decoding.tokenizer
    assert decoding.languages == ["en"]
    assert tokenizer.decode(decoding.decode(None, "en", _said("n aɪ t"))) == "night"
    assert tokenizer.decode(decoding.decode(None, "en", _said("ð ə | n aɪ t"))) == "the night"
    assert tokenizer.decode(decoding.decode(None, "en", _said("b r eɪ v | n aɪ t"))) == "brave knight"
    assert tokenizer.decode(decoding.decode(None, "en", _said("b r eɪ v | n aɪ s"))) == "brave nice"  # heard, not guessed
    decoding.set_weights({"en": LexiconWeights(context=0.0)})
    assert tokenizer.decode(decoding.decode(None, "en", _said("b r eɪ v | n aɪ t"))) == "brave night"
    (tmp_path / LEXICON_DIR / WEIGHTS_FILE).write_text(json.dumps({"en": {"lm_weight": 0.5, "word_score": 1.0,
                                                                          "context": 0.0}}))
    reloaded = LexiconDecoding.from_dir(tmp_path / LEXICON_DIR, tokenizer, 0)
    assert reloaded.weights["en"].context == 0.0
    assert tokenizer.decode(reloaded.decode(None, "en", _said("b r eɪ v | n aɪ t"))) == "brave night"


def test_without_a_hint_the_language_found_is_read_with_its_word_pairs(tmp_path):
    pairs = ["brave\t-3.0\tknight -0.5"]
    decoding = _lexicon(tmp_path / LEXICON_DIR, pairs)
    found = decoding.detect(np.zeros((1, 1), np.float32), "brave night", phone_log_probs=_said("b r eɪ v | n aɪ t"))
    assert found is not None and found[0] == "en"
    assert decoding.tokenizer.decode(found[1]) == "brave knight"


def test_pair_probabilities_after_each_word_sum_to_one_over_the_lexicon():
    """Absolute discounting interpolated with the lexicon's unigram is a distribution: with every
    pair kept, the probabilities after each context sum to 1; pairs kept only from a count of 2
    leave the rest to the backoff, which the search reads the same way."""
    unigram = {w: math.log(p) for w, p in {"the": 0.4, "night": 0.3, "knight": 0.2, "brave": 0.1}.items()}
    entries = ["The brave knight.  The night!", "The night, the knight.", "Brave night ahead"]
    pairs = make_context.count_pairs(entries, set(unigram))
    assert pairs[SENTENCE_START, "the"] == 3 and pairs["the", "night"] == 2 and pairs["brave", "knight"] == 1
    assert ("night", "the") in pairs and ("ahead", "night") not in pairs  # a sentence goes on past a comma
    assert pairs[SENTENCE_START, "brave"] == 1 and ("night", "ahead") not in pairs  # outside the lexicon: no pair
    index = {w: i for i, w in enumerate(unigram)}
    table = read_pairs(make_context.bigram_lines(pairs, unigram, min_count=1), index)
    contexts = {v for v, _ in pairs}
    for v in contexts:
        previous = -1 if v == SENTENCE_START else index[v]
        total = sum(math.exp(table.score(previous, index[w], unigram[w])) for w in unigram)
        assert total == pytest.approx(1.0, abs=0.02), v  # logs kept to two decimals
    pruned = read_pairs(make_context.bigram_lines(pairs, unigram, min_count=2), index)
    assert pruned.key(index["brave"], index["knight"]) not in pruned.pairs
    assert pruned.key(index["the"], index["night"]) in pruned.pairs
    assert pruned.score(index["brave"], index["knight"], unigram["knight"]) < table.score(index["brave"], index["knight"],
                                                                                         unigram["knight"])


def test_fortunes_are_read_without_attributions_and_the_held_out_ones_are_never_counted(tmp_path):
    path = tmp_path / "quotes.u8"
    path.write_text("Look before you leap.\n\t\t-- Proverb\n%\nA penny saved\nis a penny earned.\n%\n")
    assert make_context.fortunes([path]) == ["Look before you leap.", "A penny saved\nis a penny earned."]
    assert make_context.sentences("A penny saved\nis a penny earned.") == [["a", "penny", "saved", "is", "a", "penny",
                                                                             "earned"]]
    entries = [f"Sentence number {i} goes here." for i in range(200)]
    held = [e for e in entries if make_context.held_out(e)]
    development = [e for e in held if make_context.development(e)]
    assert 20 < len(held) < 60 and 0 < len(development) < len(held)
    counted = make_context.count_pairs([e for e in entries if not make_context.held_out(e)],
                                       {"sentence", "number", "goes", "here"} | {str(i) for i in range(200)})
    numbers = Counter(w for (v, w) in counted if v == "number")
    assert not any(numbers[e.split()[2]] for e in held) and len(numbers) == len(entries) - len(held)
