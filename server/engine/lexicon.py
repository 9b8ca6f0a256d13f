"""Lexicon-constrained CTC decoding: the canvas a denoiser starts from, spelled with real words.

How this works
--------------
A model directory may carry ``lexicon/<language>.tsv`` files, or ``.tsv.gz`` / ``.tsv.xz`` (``word<TAB>log
probability``, one word per line: a language's frequent words with their unigram frequencies). With them,
a ``canvas_start="ctc"`` model reads its CTC log-probabilities (audio embeddings through
the lm_head) with flashlight-text's ``LexiconDecoder``: a beam search over a trie of the
words' spellings in the model's own tokens, scored by the CTC and by the word's log
probability (``lm_weight``), plus ``word_score`` per word. The decoded words become the
start canvas, laid out as :func:`~server.engine.denoise.ctc_collapse` lays out a greedy
reading. Classic CPU recognizers (Kaldi, vosk) lean on a lexicon the same way; the demo
model's errors are mostly spelling by ear, which this fixes for words the lexicon holds.

Only words in the lexicon can come out; a language without a file keeps the greedy
reading. A language written without spaces (Mandarin, :data:`UNSPACED`) has its words
spelled with no closing space and joined with none: the search then also chooses where
words end, and the word probabilities pick among characters that sound alike (a greedy
Hanzi reading of syllables is mostly homophone errors). Without a hint (automatic language)
:meth:`LexiconDecoding.detect` lets the audio choose: the lexicons whose alphabet
covers most of the greedy reading's letters (so Hindi audio is not forced into Latin
words, nor Hanzi into either) each decode with a narrow beam, the best total score wins
(the unigram tables are log probabilities of one size per language, so the scores
compare), and only the winner is searched with the full beam; the result names that
language.

A model with a phoneme head (``ProjectorConfig.phones``) carries ``lexicon/phones.json``
(its inventory, blank first, then the word mark :data:`WORD_MARK`), and a language whose
lexicon lines have a third column (the word's phonemes, space separated: espeak-ng's, as in
training) is searched in phonemes: its trie is spelled in phonemes and the search reads the
phoneme CTC, what the audio says, not how the model guesses it is written; a language
without that column keeps the character search. English and French are spelled far from how they
sound, so a character search had to find "knight" through posteriors that said "nite".
Words still come out spelled, in the tokenizer's characters; words said alike ("their",
"there") are told apart by their frequency alone, unless the language has word pairs.

A lexicon may have word pairs beside it (``<language>.context.tsv.xz``, counted on running
text by ``scripts/make_context.py``): its full search then scores each word given the one
before (:mod:`server.engine.wordlm`), so that words said alike are told apart by their
context too, not by frequency alone.

Each language's ``lm_weight`` and ``word_score`` (and ``context``, how much the pairs
count) may be tuned (``scripts/tune_lexicon.py``) and saved in ``lexicon/weights.json``; a language it does not name keeps the defaults. The
search uses the language's own weights; the score :meth:`~LexiconDecoding.detect`
compares re-weighs every language's result with the defaults, so that tuning one
language does not make it win more often. Decoders are built per language on first use
(a 50,000-word trie: ~0.4 s), or all at once by :meth:`LexiconDecoding.prepare`, which the
engine's warm-up calls.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from server.engine.wordlm import CONTEXT_SUFFIX, context_file, read_pairs, word_lm

__all__ = ["DEFAULT_WEIGHTS", "LEXICON_DIR", "PHONES_FILE", "UNSPACED", "WEIGHTS_FILE", "WORD_MARK", "WORD_MARK_ID",
           "LexiconDecoding", "LexiconWeights", "lexicon_files", "read_lines", "read_weights"]

log = logging.getLogger("dgasr.lexicon")

LEXICON_DIR = "lexicon"
UNKNOWN_LOG_PROB = -20.0
# languages written without spaces between words: their lexicon words are spelled and joined without one
UNSPACED = frozenset({"zh", "ja", "th"})
WEIGHTS_FILE = "weights.json"
PHONES_FILE = "phones.json"  # a phoneme head's inventory: blank first, then WORD_MARK
WORD_MARK_ID = 1  # the word mark's index in every inventory (blank is 0)
WORD_MARK = "|"  # the phoneme between two words, as the word space is between spelled ones
# flashlight's Trie keeps the first 6 words of one spelling (kTrieMaxLabel) and prints a line on
# stderr for each further one: 158 lines at every start of the demo, whose phoneme lexicons say
# many words alike. The files list words by frequency, so capping here keeps the same 6, silently.
TRIE_MAX_WORDS = 6
_SUFFIXES = (".tsv", ".tsv.gz", ".tsv.xz")  # xz: the shipped demo's lexicons, a fifth smaller than gzip


@dataclass(frozen=True)
class LexiconWeights:
    """How a language's search weighs the word log probabilities against the CTC, and the bonus per word."""

    lm_weight: float = 0.5
    word_score: float = 1.0
    context: float = 1.0  # where the lexicon has word pairs: 0 scores words by the unigram, 1 by the pairs


DEFAULT_WEIGHTS = LexiconWeights()  # a language weights.json does not name; the weighting detect compares with

def read_lines(path: Path) -> list[str]:
    """The lines of a lexicon file: plain ``.tsv``, ``.tsv.gz`` or ``.tsv.xz``."""
    body = path.read_bytes()
    if path.name.endswith(".gz"):
        body = gzip.decompress(body)
    elif path.name.endswith(".xz"):
        body = lzma.decompress(body)
    return body.decode("utf-8").splitlines()


def lexicon_files(folder: Path) -> dict[str, Path]:
    """A lexicon folder's word lists by language (``en.tsv.xz`` -> ``en``), leaving out the word
    pairs beside them (``en.context.tsv.xz``); two lists for one language are an error."""
    files: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.tsv*")):
        if path.name.endswith(_SUFFIXES) and not path.name.endswith(CONTEXT_SUFFIX):
            language = path.name.split(".")[0]
            if language in files:
                raise ValueError(f"{folder}: two lexicons for {language}: {files[language].name} and {path.name}")
            files[language] = path
    return files


def read_weights(path: Path) -> dict[str, LexiconWeights]:
    """``weights.json`` (``{"zh": {"lm_weight": 0.8, "word_score": 0.0}, ...}``) -> weights per language."""
    body = json.loads(path.read_text(encoding="utf-8"))
    return {language: LexiconWeights(**fields) for language, fields in body.items()}


@dataclass(frozen=True)
class _Search:
    """One language's built search: flashlight's decoders (the full beam, and the narrow one
    that compares languages) over its trie, the words its indices name, and its units."""

    decoder: object
    picker: object  # the narrow beam's decoder (the full one when pick_beam is off)
    words: list[str]
    boundary: int  # the unit that ends a word: the space, or the word mark
    phonemic: bool
    keep: tuple  # the LM and the trie, which the decoders hold by C++ pointer only


class LexiconDecoding:
    def __init__(self, tokenizer, blank: int, files: dict[str, Path], *, beam: int = 32, beam_tokens: int = 16,
                 pick_beam: int = 8, weights: dict[str, LexiconWeights] | None = None,
                 phones: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.blank = blank
        self.files = files
        # beam_tokens: how many of each frame's most likely tokens a hypothesis may extend by;
        # pick_beam: the narrow beam detect compares the candidate languages with (0: the full beam)
        self.beam, self.beam_tokens, self.pick_beam = beam, beam_tokens, pick_beam
        self.weights = dict(weights or {})
        names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self._chars = {name: i for i, name in enumerate(names) if len(name) == 1}
        self._space = self._chars.get(" ")
        self._decoders: dict[str, _Search] = {}
        self._alphabets: dict[str, frozenset[str]] = {}
        self._said: dict[str, dict[str, list[int]]] = {}  # per phonemic language: word -> its phonemes
        if self._space is None:
            raise ValueError("lexicon decoding needs a tokenizer with a space token")
        # the units the search reads: characters (token ids), or a phoneme head's inventory
        self.phones = list(phones) if phones else None
        if self.phones is not None and (self.phones[1:2] != [WORD_MARK] or len(set(self.phones)) != len(self.phones)):
            raise ValueError(f"a phoneme inventory starts with blank then {WORD_MARK!r}, each phoneme once")

    @classmethod
    def from_dir(cls, folder: Path, tokenizer, blank: int, **options) -> LexiconDecoding | None:
        files = lexicon_files(folder)
        if not files:
            return None
        weights = Path(folder) / WEIGHTS_FILE
        if weights.is_file() and "weights" not in options:
            options["weights"] = read_weights(weights)
        phones = Path(folder) / PHONES_FILE
        if phones.is_file() and "phones" not in options:
            options["phones"] = json.loads(phones.read_text(encoding="utf-8"))
        return cls(tokenizer, blank, files, **options)

    def set_weights(self, weights: dict[str, LexiconWeights]) -> None:
        """Replace the per-language weights (the decoders are rebuilt on next use)."""
        self.weights = dict(weights)
        self._decoders.clear()

    def write_weights(self, weights: dict[str, LexiconWeights]) -> Path:
        """Save ``weights`` as the lexicon folder's ``weights.json``, which :meth:`from_dir` reads."""
        path = next(iter(self.files.values())).parent / WEIGHTS_FILE
        body = {language: asdict(w) for language, w in sorted(weights.items())}
        path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        return path

    @property
    def languages(self) -> list[str]:
        return list(self.files)

    def _decoder(self, language: str) -> _Search:
        if language not in self._decoders:
            from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions, SmearingMode, Trie

            words, scores, spellings, phonemic = self._read(language)
            # (units, the unit that ends a word, blank) of the search: phonemes, or the tokenizer's characters
            units, boundary, blank = (len(self.phones), WORD_MARK_ID, 0) if phonemic else (len(self.tokenizer), self._space,
                                                                                self.blank)
            trie = Trie(units, boundary)
            closing = [] if language in UNSPACED else [boundary]
            inserted = Counter()  # words per spelling
            for index, (spelling, score) in enumerate(zip(spellings, scores)):
                if inserted[key := tuple(spelling)] < TRIE_MAX_WORDS:
                    inserted[key] += 1
                    trie.insert(spelling + closing, index, score)
            trie.smear(SmearingMode.MAX)
            if phonemic:
                self._said[language] = dict(zip(words, spellings))
            words.append("<unk>")
            scores.append(UNKNOWN_LOG_PROB)
            weights = self.weights.get(language, DEFAULT_WEIGHTS)
            # the decoders keep C++ pointers to the LMs and the trie: _Search.keep holds them alive.
            # The narrow beam that compares languages scores with the unigram alone, as every
            # language has one; the full search with the word pairs where the lexicon has them.
            unigram = word_lm(scores)
            pairs = context_file(self.files[language])
            lm = (word_lm(scores, read_pairs(read_lines(pairs), {w: i for i, w in enumerate(words[:-1])}), weights.context)
                  if pairs.is_file() else unigram)

            def search(beam: int, lm):
                options = LexiconDecoderOptions(beam, self.beam_tokens, 25.0, weights.lm_weight, weights.word_score,
                                                -math.inf, 0.0, False, CriterionType.CTC)
                return LexiconDecoder(options, trie, lm, boundary, blank, len(words) - 1, [], False)

            decoder = search(self.beam, lm)
            narrow = self.pick_beam if 0 < self.pick_beam < self.beam else self.beam
            picker = search(narrow, unigram) if narrow != self.beam or lm is not unigram else decoder
            self._decoders[language] = _Search(decoder, picker, words, boundary, phonemic, (lm, unigram, trie))
            self._alphabets[language] = frozenset(c for w in words[:-1] for c in w)
            log.info("lexicon for %s: %d words", language, len(words) - 1)
        return self._decoders[language]

    def _read(self, language: str) -> tuple[list[str], list[float], list[list[int]], bool]:
        """(words, log probabilities, spellings, in phonemes?) of a language's file: the words the
        tokenizer can write and, for a phoneme search, that have phonemes of the inventory."""
        lines = read_lines(self.files[language])
        phonemic = bool(self.phones) and bool(lines) and lines[0].count("\t") >= 2
        units = {p: i for i, p in enumerate(self.phones)} if phonemic else None
        words, scores, spellings = [], [], []
        for line in lines:
            word, score, said = (line.split("\t") + ["", ""])[:3]
            if not word or not set(word) <= self._chars.keys():
                continue
            if units is None:
                spelling = [self._chars[c] for c in word]
            else:
                spelling = [units.get(p, -1) for p in said.split()]
                if not spelling or -1 in spelling:
                    continue
            words.append(word)
            scores.append(float(score))
            spellings.append(spelling)
        return words, scores, spellings, phonemic

    def prepare(self) -> None:
        """Build every language's decoder now (the engine's warm-up), not on first use."""
        for language in self.files:
            self._decoder(language)

    def reads_phones(self, language: str) -> bool:
        """Whether ``language`` is searched in phonemes (its file has them, and there is an inventory)."""
        return language in self.files and self._decoder(language).phonemic

    def pronounce(self, words: list[str], language: str | None) -> list[list[int]] | None:
        """Each word's phonemes (inventory indices) as ``language``'s lexicon says it; with no
        language, as the first lexicon in phonemes that has every word does. None when no such
        lexicon has them all (the caller then aligns characters)."""
        for name in [language] if language else list(self.files):
            if name in self.files and self.reads_phones(name) and all(w in self._said[name] for w in words):
                return [self._said[name][w] for w in words]
        return None

    def decode(self, log_probs: np.ndarray | None, language: str | None,
               phone_log_probs: np.ndarray | None = None) -> list[int] | None:
        """Token ids of the best word sequence for ``(frames, vocabulary)`` log-probabilities, or
        for ``(frames, phonemes)`` ``phone_log_probs`` where the language is searched in phonemes
        (``log_probs`` may then be None); None when there is no lexicon for ``language``."""
        if language not in self.files:
            return None
        return self._decode(self._pick(log_probs, phone_log_probs, language), language)[1]

    def _pick(self, log_probs: np.ndarray | None, phone_log_probs: np.ndarray | None, language: str) -> np.ndarray:
        if not self.reads_phones(language):
            if log_probs is None:
                raise ValueError(f"the {language} lexicon is spelled in characters: pass their log-probabilities")
            return log_probs
        if phone_log_probs is None:
            raise ValueError(f"the {language} lexicon is spelled in phonemes: pass the phoneme head's log-probabilities")
        return phone_log_probs

    def detect(self, log_probs: np.ndarray, greedy_text: str, min_cover: float = 0.6,
               phone_log_probs: np.ndarray | None = None) -> tuple[str, list[int]] | None:
        """The best of every lexicon whose alphabet covers ``min_cover`` of the greedy reading's
        letters, as ``(its language, token ids)``; None (keep the greedy reading) when none does.

        The candidates are compared by a search with the narrow ``pick_beam`` and only the
        winner is searched with the full beam. Four Latin-script lexicons searched in full
        made an unhinted request's decode 8x a hinted one's (132 vs 16 ms per 4.8 s English
        utterance); with a beam of 8 for the comparison it is 72 ms, and the held-out and
        development sets read the same (a beam of 4 picked worse: es 8.2 -> 12.7% WER)."""
        letters = [c for c in greedy_text if not c.isspace()]
        if not letters:
            return None
        candidates = []
        for language in self.files:
            self._decoder(language)
            alphabet = self._alphabets[language]
            if sum(c in alphabet for c in letters) >= min_cover * len(letters):
                candidates.append(language)
        if not candidates:
            return None
        if len(candidates) > 1:
            scores = {language: self._decode(self._pick(log_probs, phone_log_probs, language), language, narrow=True)[0]
                      for language in candidates}
            candidates = [max(candidates, key=scores.__getitem__)]
        return candidates[0], self._decode(self._pick(log_probs, phone_log_probs, candidates[0]), candidates[0])[1]

    def _decode(self, log_probs: np.ndarray, language: str, narrow: bool = False) -> tuple[float, list[int]]:
        search = self._decoder(language)
        decoder, words, boundary = search.picker if narrow else search.decoder, search.words, search.boundary
        emissions = np.full((log_probs.shape[0] + 1, log_probs.shape[1]), -30.0, dtype=np.float32)
        emissions[:-1] = log_probs
        emissions[-1, boundary] = 0.0  # a closing word end (space or word mark), so the last word can end
        emissions = np.ascontiguousarray(emissions)
        best = decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])[0]
        found = [words[w] for w in best.words if 0 <= w < len(words) - 1]
        separator = "" if language in UNSPACED else " "
        # the score detect compares: one weighting for every language, whatever each searched with
        score = (best.emittingModelScore + DEFAULT_WEIGHTS.lm_weight * best.lmScore
                 + DEFAULT_WEIGHTS.word_score * len(found))
        return score, self.tokenizer.encode(separator.join(found), add_special_tokens=False)
