"""Word timings for a transcript: its tokens aligned (CTC) to the audio embeddings read through the lm_head.

How this works
--------------
Both the real model and the demo read their projector outputs through the tied lm_head
as CTC log-probabilities (blank = pad), one row per audio slot. :func:`word_timings`
takes the transcript's own token ids (the final canvas), aligns them with
:func:`server.core.align.ctc_align`, and groups tokens into words by their text: a token
whose text starts with a space (or a SentencePiece ``▁``), or follows a space token,
starts a word; space tokens belong to no word. Special tokens are dropped first. A
word's time runs from its first token's first slot to its last token's last slot, in
seconds from the start of the request's audio; its confidence is the mean of its
tokens' scores. With a model whose lm_head cannot read the audio (tiny-random) the
times are valid but meaningless.

A model with a phoneme head (the demo) finds English, German, French and Spanish words
in what it heard in phonemes, and spells them from its lexicon: "knight" was heard as
"n aɪ t", and its letters align badly with a character reading that says "nite". Where
the lexicon says how every word of the transcript is said, the words are aligned in
phonemes instead (each word's phonemes, the word mark between words, as the head was
trained), and a word's confidence is the mean of its phonemes' scores.

The same confidences gate noise: :func:`below_gate` says when a short transcript (a
letter or a word, what a model makes of a fan or a crowd that VAD let through) is too
weakly in its audio, or too little text for its seconds of sound, to be speech;
:func:`~server.engine.denoise.run_batch` then returns it empty (the model's ``noise_gate``
in its ``dgasr.json``; off unless it sets one).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import torch

from server.core.align import ctc_align
from server.core.requests import WordTiming

from .lexicon import WORD_MARK_ID
from .model import AsrModel
from .spec import NoiseGate

__all__ = ["word_timings", "phone_timings", "text_width", "is_short", "below_gate"]

_SPACE = ("\u2581", " ", "\u0120")  # SentencePiece, plain, byte-level BPE word starts


def word_timings(model: AsrModel, embeds: torch.Tensor, canvas: list[int], seconds_per_slot: float,
                 audio_seconds: float, phone_logits: torch.Tensor | None = None,
                 language: str | None = None) -> tuple[WordTiming, ...]:
    """Words of ``canvas`` with times, from one request's audio embeddings ``(slots, hidden)``
    (and, for a model with a phoneme head, its phoneme logits ``(slots, phonemes)``)."""
    special = set(model.tokenizer.all_special_ids)
    tokens = [t for t in model.canvas_tokens(canvas) if t not in special]
    if not tokens:
        return ()
    slots = min(embeds.shape[0], max(1, round(audio_seconds / seconds_per_slot)))  # only slots with audio
    said = None
    if phone_logits is not None and model.lexicon is not None:
        written = model.decode(canvas).split()
        said = model.lexicon.pronounce(written, language)
    if said:
        with torch.inference_mode():
            phones = torch.log_softmax(phone_logits[:slots].float(), dim=-1).cpu().numpy()
        return phone_timings(phones, written, said, seconds_per_slot, audio_seconds)
    bb = model.backbone
    with torch.inference_mode():
        log_probs = torch.log_softmax(bb.lm_head(embeds.to(bb.dtype)).float(), dim=-1).cpu().numpy()
    spans = ctc_align(log_probs[:slots], tokens, bb.config.text_config.pad_token_id)
    if spans is None:
        return ()
    words: list[tuple[str, int, int, list[float]]] = []
    starts_word = True
    for token, span in zip(tokens, spans):
        piece = model.tokenizer.convert_ids_to_tokens(token)
        text = model.tokenizer.decode([token])
        if not text.strip():
            starts_word = True
            continue
        if starts_word or piece.startswith(_SPACE) or not words:
            words.append((text.strip(), span.first, span.last, [span.score]))
        else:
            word, first, _, scores = words[-1]
            words[-1] = (word + text.strip(), first, span.last, scores + [span.score])
        starts_word = False
    return tuple(
        WordTiming(word, round(first * seconds_per_slot, 3), round(min((last + 1) * seconds_per_slot, audio_seconds), 3),
                   round(sum(scores) / len(scores), 3))
        for word, first, last, scores in words
    )


def phone_timings(log_probs: np.ndarray, words: list[str], said: list[list[int]], seconds_per_slot: float,
                  audio_seconds: float) -> tuple[WordTiming, ...]:
    """``words`` with times and confidences from phoneme log-probabilities ``(slots, phonemes)``
    (blank 0, word mark 1): ``said`` holds each word's phonemes, aligned with the mark between words."""
    targets = [unit for index, phones in enumerate(said) for unit in ([WORD_MARK_ID] if index else []) + phones]
    spans = ctc_align(log_probs, targets, 0)
    if spans is None:
        return ()
    timed, at = [], 0
    for word, phones in zip(words, said):
        mine, at = spans[at: at + len(phones)], at + len(phones)
        # CTC spikes a phoneme in a frame or two, early in the sound: a word lasts until the
        # word mark after it (its last vowel and the consonant after it are still being said)
        last = spans[at].first - 1 if at < len(spans) else mine[-1].last
        at += 1  # past the word mark
        timed.append(WordTiming(word, round(mine[0].first * seconds_per_slot, 3),
                                round(min((last + 1) * seconds_per_slot, audio_seconds), 3),
                                round(sum(span.score for span in mine) / len(mine), 3)))
    return tuple(timed)


def text_width(text: str) -> int:
    """How wide ``text`` is, spaces aside: a wide character (Hanzi, a whole syllable) and a
    digit (a number word: "5" is "five") count two.

    The gate's length limit is about how much was said; counted in code points, three
    Hanzi (three syllables, often two words) would weigh as little as "the", and "five five"
    said in 1.5 s, written "5 5", as little as one letter of babble.
    """
    return sum(2 if c.isdigit() or unicodedata.east_asian_width(c) in "WF" else 1 for c in text if not c.isspace())


def is_short(gate: NoiseGate, text: str) -> bool:
    """Whether the gate looks at ``text`` at all: non-empty and at most ``max_chars`` wide."""
    return gate.max_chars > 0 and 0 < text_width(text) <= gate.max_chars


def below_gate(gate: NoiseGate, text: str, words: tuple[WordTiming, ...], audio_seconds: float) -> bool:
    """Whether a short transcript is too weakly in its audio to be speech (see :class:`NoiseGate`).

    Text that cannot be aligned to the audio at all (no words) is below any gate; so is
    too little text for the audio it came from (one letter out of seconds of babble).
    """
    if not words or sum(w.confidence for w in words) / len(words) < gate.min_confidence:
        return True
    return text_width(text) < gate.min_chars_per_second * audio_seconds
