"""scripts/demo_phones.py: espeak-ng's phonemes as the demo's CTC targets and in its lexicon.

The phoneme search only works if the targets the head learns and the lexicon's spellings are
the same phonemes: these tests pin that, with the real espeak-ng (through phonemizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import demo_phones as dp  # noqa: E402

from server.engine.lexicon import PHONES_FILE, UNSPACED, WORD_MARK, lexicon_files, read_lines  # noqa: E402

DEMO_LEXICON = ROOT / "server" / "models" / "demo" / "lexicon"


def test_an_utterances_targets_are_its_words_said_alone_joined_by_the_word_mark():
    """Words are phonemized in isolation, as the lexicon spells them, so "knight" and "night"
    are the same three phonemes, and a number is the words said for it."""
    said = dp.Phonemizer()
    knight, night, number = said.words("en", ["knight", "night", "42"])
    assert knight == night == ("n", "aɪ", "t")
    assert WORD_MARK in number and len(number) >= 6  # "forty two": two words said
    targets = said.utterance("en", "the knight 42")
    assert targets == (*said.words("en", ["the"])[0], WORD_MARK, *knight, WORD_MARK, *number)
    batch = said.utterances([("en", "the knight 42"), ("fr", "les enfants"), ("zh", "我们是中国人")])
    assert batch[0] == targets
    assert batch[1] == (*said.words("fr", ["les"])[0], WORD_MARK, *said.words("fr", ["enfants"])[0])
    # Mandarin is written without spaces: no word marks, as its lexicon words close with none
    assert "zh" in UNSPACED
    assert batch[2] and WORD_MARK not in batch[2]


def test_the_shipped_lexicon_spells_its_phonemic_languages_in_the_inventory_espeak_says_them_with():
    """Every word of a language the demo searches in phonemes is spelled with the inventory
    its head reads, as espeak-ng says it today (a word sampled every 1,000)."""
    phones = json.loads((DEMO_LEXICON / PHONES_FILE).read_text(encoding="utf-8"))
    assert phones[:2] == [dp.BLANK, WORD_MARK] and len(set(phones)) == len(phones)
    inventory = set(phones)
    said = dp.Phonemizer()
    phonemic = []
    for language, path in lexicon_files(DEMO_LEXICON).items():
        rows = [line.split("\t") for line in read_lines(path)]
        if len(rows[0]) < 3:
            continue
        phonemic.append(language)
        assert all(len(r) == 3 and r[2] and set(r[2].split()) <= inventory for r in rows), language
        sample = rows[::1000]
        assert [" ".join(p) for p in said.words(language, [r[0] for r in sample])] == [r[2] for r in sample]
    assert {"en", "fr"} <= set(phonemic), phonemic
