#!/usr/bin/env python
"""Write a model directory's word bigrams: ``lexicon/<language>.context.tsv.xz``, counted on
real sentences, so the lexicon search hears words in their context.

How this works
--------------
The unigram lexicon picks among words said alike by frequency alone ("their" for "there"
whatever came before); people speak sentences, in which the word before says much about
the next ("in his power", not "in is power"). This counts word pairs in Debian's fortune
cookies (``fortunes`` for English, ``fortunes-de``, ``fortunes-es``: quotations, jokes and
sayings, the only running text in those languages that the package registries serve here),
one sentence at a time, from a start mark ``<s>``, over the words the language's lexicon
holds (a word it lacks breaks the chain: the pair after it is not counted).

The model is absolute discounting interpolated with the lexicon's own unigram (wordfreq's
frequencies), so it is normalised over the lexicon and a pair never seen keeps the
unigram's ranking::

    P(w | v) = max(c(v, w) - D, 0) / c(v) + D * N(v) / c(v) * P_lexicon(w)

(``N(v)``: how many different words followed ``v``). The file holds one line per context,
in natural logs to two decimals: ``v<TAB>log(D * N(v) / c(v))<TAB>w log P(w | v) w' log
P(w' | v) ...`` for the pairs seen at least ``--min-count`` times (rarer pairs fall back to
the interpolation's second term, which keeps the file small: the demo stays under 60 MB). One fortune in five (by a stable hash) is held
out (two, one for tuning): never counted, and ``scripts/demo_data.py --sentences`` speaks those.

    python scripts/make_context.py server/models/demo --languages en,de,es
"""

from __future__ import annotations

import argparse
import lzma
import math
import re
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_data import normalize  # noqa: E402
from server.engine.lexicon import LEXICON_DIR, lexicon_files, read_lines  # noqa: E402
from server.engine.wordlm import CONTEXT_SUFFIX, SENTENCE_START  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
# where each language's fortunes are (Debian packages fortunes, fortunes-de, fortunes-es); the Chinese
# package holds classical poems (tang300, song100), not modern Mandarin, so none is read for zh
SOURCES = {"en": (FORTUNES, ("tang300", "song100")), "de": (FORTUNES / "de", ()), "es": (FORTUNES / "es", ())}
_SENTENCE_END = re.compile(r"[.!?;:\"()\[\]]+\s|[.!?]+$|\n\s*\n")
_ATTRIBUTION = re.compile(r"^\s*(--|—|~)")


def fortune_files(language: str) -> list[Path]:
    """The UTF-8 fortune files of ``language`` (Debian links ``name.u8`` to the file itself)."""
    folder, skip = SOURCES[language]
    return sorted(p for p in folder.glob("*.u8") if p.name[: -len(".u8")] not in skip)


def fortunes(files: list[Path]) -> list[str]:
    """Every fortune (the text between two ``%`` lines), attribution lines left out."""
    entries = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            lines = [line for line in entry.splitlines() if not _ATTRIBUTION.match(line)]
            entry = "\n".join(lines).strip()
            if entry:
                entries.append(entry)
    return entries


def held_out(entry: str) -> bool:
    """Two fortunes in ten, by a hash of their text, are never counted: the held-out sentences
    speak one of them, the development sentences (:func:`development`) the other."""
    return zlib.crc32(entry.encode()) % 10 in (3, 7)


def development(entry: str) -> bool:
    """The held-out fortunes that the development sentences (tuning) speak; the test's are the rest."""
    return zlib.crc32(entry.encode()) % 10 == 7


def words_of(sentence: str) -> list[str]:
    """A sentence's words in the lexicon's form: NFC, case-folded as wordfreq folds its words (so German
    "weiß" and the old "daß" are "weiss" and "dass", as Swiss German writes them and the model spells
    them), apostrophes kept, other punctuation a space."""
    return [w.strip("'") for w in normalize(sentence.casefold().replace("’", "'")).split() if w.strip("'")]


def sentences(entry: str) -> list[list[str]]:
    """An entry's sentences, each as its words (line breaks inside a sentence are only layout)."""
    return [ws for part in _SENTENCE_END.split(entry) if (ws := words_of(part))]


def count_pairs(entries: list[str], vocabulary: set[str]) -> Counter:
    """(previous word or <s>, word) counts over the sentences; a word outside ``vocabulary`` breaks the chain."""
    pairs: Counter = Counter()
    for entry in entries:
        for ws in sentences(entry):
            previous = SENTENCE_START
            for w in ws:
                if w not in vocabulary:
                    previous = None
                    continue
                if previous is not None:
                    pairs[previous, w] += 1
                previous = w
    return pairs


def bigram_lines(pairs: Counter, unigram: dict[str, float], discount: float = 0.75, min_count: int = 2) -> list[str]:
    """The file's lines, one per context: its backoff weight, then its pairs seen ``min_count`` times or more."""
    totals: Counter = Counter()
    followers: defaultdict = defaultdict(list)
    for (v, w), c in pairs.items():
        totals[v] += c
        followers[v].append((w, c))
    lines = []
    for v in sorted(totals):
        total = totals[v]
        backoff = discount * len(followers[v]) / total
        kept = [f"{w} {math.log((c - discount) / total + backoff * math.exp(unigram[w])):.2f}"
                for w, c in sorted(followers[v], key=lambda wc: (-wc[1], wc[0])) if c >= min_count]
        lines.append("\t".join([v, f"{math.log(backoff):.2f}", " ".join(kept)]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory with lexicon/<language>.tsv[.xz]")
    parser.add_argument("--languages", default=",".join(SOURCES))
    parser.add_argument("--discount", type=float, default=0.75)
    parser.add_argument("--min-count", type=int, default=2)
    args = parser.parse_args()
    folder = args.model / LEXICON_DIR
    for language in args.languages.split(","):
        if language not in SOURCES:
            raise SystemExit(f"no running text for {language!r} here; have: {', '.join(SOURCES)}")
        files = fortune_files(language)
        if not files:
            raise SystemExit(f"no fortunes for {language} under {SOURCES[language][0]}: apt-get install fortunes fortunes-de fortunes-es")
        unigram = {}
        for line in read_lines(lexicon_files(folder)[language]):
            word, score = line.split("\t")[:2]
            unigram[word] = float(score)
        entries = [e for e in fortunes(files) if not held_out(e)]
        pairs = count_pairs(entries, set(unigram))
        lines = bigram_lines(pairs, unigram, args.discount, args.min_count)
        out = folder / f"{language}{CONTEXT_SUFFIX}"
        out.write_bytes(lzma.compress(("\n".join(lines) + "\n").encode(), preset=9 | lzma.PRESET_EXTREME))
        kept = sum(len(line.split("\t")[2].split()) // 2 for line in lines)
        print(f"{language}: {len(entries)} fortunes, {sum(pairs.values())} pairs counted ({len(pairs)} different), "
              f"{kept} kept -> {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
