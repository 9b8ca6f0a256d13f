"""CTC forced alignment: where in the audio each token of a known transcript was said (pure numpy).

How this works
--------------
Both dgasr models can read their audio embeddings through the lm_head as CTC
log-probabilities (one row per audio slot, blank = the pad id). Given the final's token
ids, :func:`ctc_align` finds the single most likely CTC path that spells exactly those
tokens (Viterbi over the usual blank-interleaved state sequence: state ``2k+1`` is token
``k``, even states are blanks; a token may repeat across frames, and two equal tokens in
a row need a blank between them). Each token gets the frames its state held, and a
score: the mean probability of its frames. torchaudio's ``forced_align`` did this but is
gone from the torch versions dgasr runs on, so this is the small version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TokenSpan", "ctc_align"]

_NEG = -1e30


@dataclass(frozen=True)
class TokenSpan:
    first: int  # first frame (audio slot) of the token
    last: int  # last frame, inclusive
    score: float  # mean probability over its frames


def ctc_align(log_probs: np.ndarray, targets: list[int], blank: int) -> list[TokenSpan] | None:
    """The Viterbi CTC alignment of ``targets`` to ``log_probs`` (frames x vocabulary), one span per target.

    Returns None when the audio has too few frames to spell the targets (each token needs
    a frame, and a repeated token one more for the blank between).
    """
    frames = log_probs.shape[0]
    count = len(targets)
    if count == 0:
        return []
    repeats = sum(1 for a, b in zip(targets, targets[1:]) if a == b)
    if frames < count + repeats:
        return None
    states = np.full(2 * count + 1, blank, dtype=np.int64)
    states[1::2] = targets
    # A token state may be entered from two states back when the token differs from the previous one.
    skip = np.zeros(len(states), dtype=bool)
    skip[3::2] = np.asarray(targets[1:]) != np.asarray(targets[:-1])
    emit = log_probs[:, states].astype(np.float64)  # (frames, states)
    score = np.full(len(states), _NEG)
    score[:2] = emit[0, :2]
    back = np.zeros((frames, len(states)), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, frames):
        stay = score
        step = np.concatenate(([_NEG], score[:-1]))
        jump = np.where(skip, np.concatenate(([_NEG, _NEG], score[:-2])), _NEG)
        choice = np.stack([stay, step, jump])
        back[t] = np.argmax(choice, axis=0)
        score = choice.max(axis=0) + emit[t]
    state = len(states) - 1 if score[-1] >= score[-2] else len(states) - 2
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    spans = []
    probs = np.exp(emit[np.arange(frames), path])
    for k in range(count):
        held = np.flatnonzero(path == 2 * k + 1)
        spans.append(TokenSpan(int(held[0]), int(held[-1]), float(probs[held].mean())))
    return spans
