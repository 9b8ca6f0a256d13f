"""Phonemes for the demo model: espeak-ng's pronunciations as CTC targets, and a pronouncing lexicon.

How this works
--------------
The demo's character CTC spells by ear ("feachurs lettas"), and English and French are
spelled far from how they sound: a character lexicon search must find "knight" through
posteriors that say "nite". A phoneme CTC reads what the audio says, and a lexicon of
pronunciations (each word's phonemes, from espeak-ng through ``phonemizer``) turns phonemes
into spelled words, the way classic recognizers (Kaldi, wav2letter) do.

* :class:`Phonemizer` gives a word's phonemes per language (cached), and an utterance's
  phoneme targets: its words' pronunciations in isolation, joined by :data:`WORD` (so the
  targets match the lexicon, which also spells words in isolation). Mandarin is written
  without spaces: its utterances are phonemized whole, with no word marks, and its lexicon
  words are spelled without a closing :data:`WORD`, as ``server.engine.lexicon`` does for
  characters.
* The head that learns them is the projector's own (``ProjectorConfig.phones``: a layer norm
  and a linear over its hidden state, beside the projection to the backbone width); blank is
  id 0, :data:`WORD` id 1 (``scripts/train_phones.py``).
* :func:`write_lexicon` writes a language's lexicon with each word's phonemes, which the
  engine's ``server.engine.lexicon.LexiconDecoding`` searches (flashlight-text over a trie of
  pronunciations, the same unigram log probabilities as the character lexicon).

Needs the ``train`` extra (phonemizer, wordfreq) and espeak-ng.
"""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

from server.engine.lexicon import PHONES_FILE, UNSPACED, WORD_MARK

__all__ = ["BLANK", "WORD", "VOICES", "Phonemizer", "inventory", "write_lexicon"]

BLANK = "<blank>"
WORD = WORD_MARK  # between two words' phonemes
VOICES = {"en": "en-us", "de": "de", "fr": "fr-fr", "es": "es", "hi": "hi", "zh": "cmn-latn-pinyin"}
_UNKNOWN = "??"


class Phonemizer:
    """espeak-ng pronunciations, one backend per language, words cached."""

    def __init__(self) -> None:
        self._backends: dict[str, object] = {}
        self._cache: dict[str, dict[str, tuple[str, ...]]] = {lang: {} for lang in VOICES}

    def _backend(self, language: str):
        if language not in self._backends:
            from phonemizer.backend import EspeakBackend

            self._backends[language] = EspeakBackend(VOICES[language], language_switch="remove-flags")
        return self._backends[language]

    def _run(self, language: str, texts: list[str]) -> list[tuple[str, ...]]:
        from phonemizer.separator import Separator

        out = self._backend(language).phonemize(texts, separator=Separator(phone=" ", word=WORD, syllable=""),
                                                strip=True, njobs=1)
        rows = []
        for line in out:
            phones = [p for p in line.replace(WORD, f" {WORD} ").split() if p != _UNKNOWN]
            if language in UNSPACED:
                phones = [p for p in phones if p != WORD]
            while phones and phones[-1] == WORD:
                phones.pop()
            rows.append(tuple(phones))
        return rows

    def words(self, language: str, words: list[str]) -> list[tuple[str, ...]]:
        """Each word's phonemes (a number's may hold :data:`WORD` marks: "123" is three words said)."""
        cache = self._cache[language]
        todo = sorted({w for w in words if w not in cache})
        if todo:
            cache.update(zip(todo, self._run(language, todo)))
        return [cache[w] for w in words]

    def utterance(self, language: str, text: str) -> tuple[str, ...]:
        """CTC targets for a transcript: its words' phonemes joined by :data:`WORD`."""
        if language in UNSPACED:
            return self._run(language, [text])[0]
        out: list[str] = []
        for phones in self.words(language, text.split()):
            if phones:
                out += ([WORD] if out else []) + list(phones)
        return tuple(out)

    def utterances(self, rows: list[tuple[str, str]]) -> list[tuple[str, ...]]:
        """:meth:`utterance` for many ``(language, text)`` (one espeak call per language)."""
        out: list[tuple[str, ...] | None] = [None] * len(rows)
        for language in VOICES:
            picks = [i for i, (lang, _) in enumerate(rows) if lang == language]
            if not picks:
                continue
            if language in UNSPACED:
                for i, phones in zip(picks, self._run(language, [rows[i][1] for i in picks])):
                    out[i] = phones
            else:
                self.words(language, [w for i in picks for w in rows[i][1].split()])
                for i in picks:
                    out[i] = self.utterance(language, rows[i][1])
        return out  # type: ignore[return-value]


def inventory(phonemizer: Phonemizer, lexicons: dict[str, list[str]]) -> list[str]:
    """Every phoneme the lexicons' words are said with: blank, the word mark, then by first use."""
    seen = {BLANK: 0, WORD: 1}
    for language, words in lexicons.items():
        for phones in phonemizer.words(language, words):
            for p in phones:
                seen.setdefault(p, len(seen))
    return list(seen)


def lexicon_words(language: str, top: int = 50_000) -> dict[str, float]:
    """The words and log probabilities scripts/make_lexicon.py gives the character lexicon."""
    from make_lexicon import word_log_probs

    return word_log_probs(language, top)


def write_lexicon(path: Path, phonemizer: Phonemizer, language: str, rows: dict[str, float]) -> None:
    """``word<TAB>log probability<TAB>phonemes`` (space separated), xz-compressed if ``path`` ends
    in ``.xz`` (as shipped: a fifth smaller than gzip), else gzipped."""
    words = list(rows)
    lines = [f"{w}\t{rows[w]:.4f}\t{' '.join(p)}\n" for w, p in zip(words, phonemizer.words(language, words)) if p]
    path.write_bytes(compress("".join(lines).encode("utf-8"), path))


def compress(body: bytes, path: Path) -> bytes:
    """``body`` as a lexicon file named ``path`` holds it (.xz, .gz, or plain)."""
    if path.name.endswith(".xz"):
        return lzma.compress(body, preset=9 | lzma.PRESET_EXTREME)
    return gzip.compress(body, mtime=0) if path.name.endswith(".gz") else body


def save_phones(folder: Path, phones: list[str]) -> None:
    (folder / PHONES_FILE).write_text(json.dumps(phones, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def load_phones(folder: Path) -> list[str]:
    """The inventory of ``folder`` (``--out`` of this script) or of a model directory's lexicon."""
    path = folder / PHONES_FILE if (folder / PHONES_FILE).exists() else folder / "lexicon" / PHONES_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def main() -> None:
    """``python scripts/demo_phones.py --out runs/phones --top 40000``: the inventory and every language's lexicon."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/phones"))
    parser.add_argument("--top", type=int, default=50_000, help="words per language (numbers 0-999 come on top)")
    parser.add_argument("--inventory", type=Path, help="a trained head's phones.json to keep (else made from the words)")
    args = parser.parse_args()
    said = Phonemizer()
    lexicons = {language: lexicon_words(language, args.top) for language in VOICES}
    (args.out / "lexicon").mkdir(parents=True, exist_ok=True)
    phones = json.loads(args.inventory.read_text(encoding="utf-8")) if args.inventory else inventory(said, lexicons)
    save_phones(args.out, phones)
    for language, rows in lexicons.items():
        write_lexicon(args.out / "lexicon" / f"{language}.tsv.xz", said, language, rows)
    print(f"{len(phones)} phonemes; lexicons of {', '.join(lexicons)} in {args.out / 'lexicon'}")


if __name__ == "__main__":
    main()
