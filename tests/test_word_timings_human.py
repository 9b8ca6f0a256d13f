"""Word timings on human speech: word boundaries fall in the pauses a person left between words.

The shipped demo model's audio embeddings, read through its lm_head, are CTC posteriors;
:func:`server.engine.words.word_timings` aligns a transcript's characters to them (or,
where its lexicon says how every word is said, its phonemes to the phoneme head's). Here the
transcript is each pocketsphinx-testdata recording's own (so the test measures the
alignment, not the recognition), and the truth is the audio itself: every pause of at
least ``MIN_PAUSE`` with speech on both sides (10 ms frames more than ``DEPTH`` dB below
the clip's loudest) is unambiguous, and some word must end and the next begin within
``TOLERANCE`` of it. A level threshold cannot tell every pause from a long stop closure
inside a word (the /t/ of "hearts") or a breath after the last one, so three in four of
the pauses it finds must be met, and the test says which were not.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import human_english

from server.engine import load_model
from server.engine.frames import read_audio
from server.engine.words import word_timings

MIN_PAUSE = 0.12
TOLERANCE = 0.15
FRAME = 160  # 10 ms
DEPTH = 25.0  # dB below the clip's loudest frame that counts as quiet
FLANK, FLANK_WINDOW = 0.1, 0.25


def _pauses(audio: np.ndarray, below_db: float = DEPTH) -> list[tuple[float, float]]:
    """(start, end) seconds of the quiet runs of at least MIN_PAUSE with speech on both sides
    (at least FLANK of loud frames in the FLANK_WINDOW before and after: not a click or a breath)."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = level > level.max() - below_db
    window, need = round(FLANK_WINDOW * 100), round(FLANK * 100)
    pauses, start = [], None
    for i in range(1, len(loud)):
        if not loud[i] and loud[i - 1]:
            start = i
        elif loud[i] and not loud[i - 1] and start is not None:
            if (i - start) / 100 >= MIN_PAUSE and loud[max(0, start - window): start].sum() >= need \
                    and loud[i: i + window].sum() >= need:
                pauses.append((start / 100, i / 100))
            start = None
    return pauses


def _normalized(text: str) -> str:
    return " ".join("".join(c if c.isalnum() or c in "' " else " " for c in text.lower()).split())


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", "cpu")


@pytest.mark.parametrize("phonemes", [False, True], ids=["characters", "phonemes"])
def test_word_boundaries_fall_within_150_ms_of_the_pauses_between_words(demo, phonemes):
    """Aligned in characters, and in the phonemes the lexicon says each word in (where it says
    every word of the recording: not "dashwood")."""
    checked = 0
    misses = []
    for name, audio, text in human_english():
        audio = np.asarray(audio)
        words = _normalized(text)
        ids = demo.tokenizer.encode(words, add_special_tokens=False) + [demo.eos_token_id]
        embeds, phones = read_audio(demo, [audio])
        slot = demo.spec.encoder_samples(len(audio)) / 16000 / embeds.shape[1]
        timings = word_timings(demo, embeds[0], ids, slot, len(audio) / 16000, phones[0] if phonemes else None, "en")
        assert [w.word for w in timings] == words.split(), name
        assert all(a.end <= b.start for a, b in zip(timings, timings[1:])), name  # in order, no overlap
        for start, end in _pauses(audio):
            checked += 1
            near = [(a.word, b.word) for a, b in zip(timings, timings[1:])
                    if start - TOLERANCE <= a.end <= end + TOLERANCE and start - TOLERANCE <= b.start <= end + TOLERANCE]
            if not near:
                misses.append((name, round(start, 2), round(end, 2), [(w.word, w.start, w.end) for w in timings]))
    assert checked >= 8  # the recordings have this many quiet runs with speech on both sides
    assert len(misses) <= checked // 4, misses
