"""CTC forced alignment (server.core.align) on log-probabilities whose best path is known."""

from __future__ import annotations

import numpy as np

from server.core.align import ctc_align

BLANK = 0


def _frames(path: list[int], vocab: int = 6, sharp: float = 0.9) -> np.ndarray:
    """Log-probabilities where frame t says path[t] with probability ``sharp``."""
    probs = np.full((len(path), vocab), (1 - sharp) / (vocab - 1))
    probs[np.arange(len(path)), path] = sharp
    return np.log(probs)


def test_each_token_gets_the_frames_that_said_it() -> None:
    path = [0, 0, 3, 3, 3, 0, 4, 0, 0, 5, 5, 0]
    spans = ctc_align(_frames(path), [3, 4, 5], BLANK)
    assert [(s.first, s.last) for s in spans] == [(2, 4), (6, 6), (9, 10)]
    assert all(abs(s.score - 0.9) < 1e-9 for s in spans)


def test_a_repeated_token_is_split_by_the_blank_between() -> None:
    path = [2, 2, 0, 2, 0, 0]
    spans = ctc_align(_frames(path), [2, 2], BLANK)
    assert [(s.first, s.last) for s in spans] == [(0, 1), (3, 3)]


def test_the_transcript_is_forced_even_where_the_audio_disagrees() -> None:
    """Frames that say other tokens still give every target a span, in order, without overlap."""
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(6), size=40))
    spans = ctc_align(log_probs, [1, 2, 3, 2, 1], BLANK)
    assert len(spans) == 5
    assert all(a.last < b.first for a, b in zip(spans, spans[1:]))
    assert all(s.first <= s.last for s in spans) and 0 <= spans[0].first and spans[-1].last < 40


def test_too_few_frames_for_the_tokens_is_none_and_no_tokens_is_empty() -> None:
    assert ctc_align(_frames([1, 1]), [1, 1], BLANK) is None  # needs a blank between: 3 frames
    assert ctc_align(_frames([1, 2]), [], BLANK) == []
