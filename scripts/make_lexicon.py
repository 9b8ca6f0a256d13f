#!/usr/bin/env python
"""Write a model directory's lexicon: ``lexicon/<language>.tsv.gz`` from wordfreq's frequent words.

For each language (en, de, fr, es, hi, zh): wordfreq's ``--top`` most frequent words
whose letters the model's tokenizer has, plus the numbers 0-999, each with its unigram log
probability (97% of the mass to the words by frequency, 3% spread evenly over the
numbers). ``server/engine/lexicon.py`` decodes with them (see its docstring; Mandarin's
words, as wordfreq segments them, are spelled without spaces). Needs the ``train`` extra
(wordfreq). ``--languages`` writes only some.

    python scripts/make_lexicon.py runs/demo/export --top 50000
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LANGUAGES = ("en", "de", "fr", "es", "hi", "zh")


def word_log_probs(language: str, top: int, alphabet: set[str] | None = None) -> dict[str, float]:
    """wordfreq's ``top`` words of ``language`` (those written in ``alphabet``, if given) and the
    numbers 0-999, each with its unigram log probability (97% of the mass by frequency, 3% to the numbers)."""
    import wordfreq

    # the list's own frequencies: word_frequency() would re-tokenize each word (for Mandarin with jieba)
    table = wordfreq.get_frequency_dict(language)
    words = [w for w in wordfreq.top_n_list(language, top) if " " not in w and (alphabet is None or set(w) <= alphabet)]
    freqs = [table.get(w, 0.0) + 1e-9 for w in words]
    total = sum(freqs)
    rows = {w: math.log(0.97 * f / total) for w, f in zip(words, freqs)}
    for number in range(1000):
        rows.setdefault(str(number), math.log(0.03 / 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model directory (dgasr layout)")
    parser.add_argument("--top", type=int, default=50_000)
    parser.add_argument("--languages", default=",".join(LANGUAGES), help="comma-separated")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model / "tokenizer")
    alphabet = {t for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) if len(t) == 1}
    out = args.model / "lexicon"
    out.mkdir(exist_ok=True)
    for language in args.languages.split(","):
        rows = word_log_probs(language, args.top, alphabet)
        body = "".join(f"{w}\t{p:.4f}\n" for w, p in rows.items()).encode("utf-8")
        (out / f"{language}.tsv").unlink(missing_ok=True)
        # gzip (mtime 0: the same words give the same bytes): the lexicon ships inside the repository
        (out / f"{language}.tsv.gz").write_bytes(gzip.compress(body, mtime=0))
        print(f"{language}: {len(rows)} words")


if __name__ == "__main__":
    main()
