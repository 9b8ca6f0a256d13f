"""The word language models the lexicon search scores words with: a unigram, or word pairs.

How this works
--------------
flashlight-text's ``LexiconDecoder`` asks a language model for each word a hypothesis ends
(``score(state, word) -> (next state, log probability)``) and merges hypotheses that reach
the same trie node in the same state. A unigram keeps one state for everything (words
said alike are chosen by frequency alone). :class:`WordPairs` (written by
``scripts/make_context.py`` as ``lexicon/<language>.context.tsv.xz``) makes the state the
last word, so the search may prefer "in his power" to "in is power": the state after a word
is the same object whoever reached it (``LMState.child`` of one root), so hypotheses that
end in the same word still merge, as a bigram's would. A pair never seen scores as the
context's backoff weight plus the word's unigram log probability; ``weight`` (``context``
in ``weights.json``) moves each score from the unigram's (0) to the pair model's (1).

Every child state is made when the model is built, so that searches running on two
threads at once only read the state tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CONTEXT_SUFFIX", "SENTENCE_START", "WordPairs", "read_pairs", "word_lm"]

CONTEXT_SUFFIX = ".context.tsv.xz"  # a lexicon's word pairs, beside <language>.tsv.xz
SENTENCE_START = "<s>"  # the context of a recording's first word
_START = -1  # its index


@dataclass
class WordPairs:
    """Log probabilities of words after a context word, by word index (``-1``: the sentence start).

    A pair's key is one int, ``(context + 1) * size + word``: the search asks for thousands of
    pairs per second of audio, and an int hashes faster than a tuple."""

    size: int  # how many words the indices run over
    backoff: dict[int, float] = field(default_factory=dict)  # context -> log of the mass left to the unigram
    pairs: dict[int, float] = field(default_factory=dict)  # key(context, word) -> log P(word | context)

    def key(self, previous: int, word: int) -> int:
        return (previous + 1) * self.size + word

    def score(self, previous: int, word: int, unigram: float) -> float:
        found = self.pairs.get(self.key(previous, word))
        return found if found is not None else self.backoff.get(previous, 0.0) + unigram


def read_pairs(lines: list[str], index: dict[str, int]) -> WordPairs:
    """A context file's lines (``context<TAB>log backoff<TAB>word log P word log P ...``, written by
    ``scripts/make_context.py``) over the search's word indices;
    pairs with a word the search does not hold are left out."""
    table = WordPairs(len(index))
    for line in lines:
        context, backoff, followers = line.split("\t")
        previous = _START if context == SENTENCE_START else index.get(context)
        if previous is None:
            continue
        table.backoff[previous] = float(backoff)
        fields = followers.split()
        for word, value in zip(fields[::2], fields[1::2]):
            if word in index:
                table.pairs[table.key(previous, index[word])] = float(value)
    return table


def word_lm(scores: list[float], pairs: WordPairs | None = None, weight: float = 1.0):
    """A flashlight ``LM`` over word indices 0..len(scores)-1: the unigram ``scores``, or, given
    ``pairs``, the pair model mixed with it by ``weight`` (log-linear)."""
    from flashlight.lib.text.decoder import LM, LMState

    class Unigram(LM):
        def __init__(self) -> None:
            LM.__init__(self)

        def start(self, start_with_nothing: bool):
            return LMState()

        def score(self, state, index: int):
            # A unigram has no history: every hypothesis keeps the one start
            # state, so the search merges those that differ only in past words
            # (a child state per word kept near-duplicates apart and crowded the
            # beam; measured 45.1 -> 42.0% en WER, 33.5 -> 31.6% zh CER).
            return state, scores[index]

        def finish(self, state):
            return state, 0.0

    if pairs is None or weight == 0:
        return Unigram()

    class Pairs(LM):
        def __init__(self) -> None:
            LM.__init__(self)
            self.root = LMState()
            self.after = [self.root.child(i) for i in range(len(scores))]  # the state after each word
            # by id(): pybind hands back the one Python object per state while self.after holds
            # it, and an id hashes without a call into C++
            self.last = {id(state): i for i, state in enumerate(self.after)}
            self.last[id(self.root)] = _START

        def start(self, start_with_nothing: bool):
            return self.root

        def score(self, state, index: int):
            unigram = scores[index]
            paired = pairs.score(self.last[id(state)], index, unigram)
            return self.after[index], unigram + weight * (paired - unigram)

        def finish(self, state):
            return state, 0.0

    return Pairs()


def context_file(lexicon: Path) -> Path:
    """Where a lexicon file's word pairs are: ``en.tsv.xz`` -> ``en.context.tsv.xz``."""
    return lexicon.with_name(lexicon.name.split(".")[0] + CONTEXT_SUFFIX)
