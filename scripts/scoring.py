"""How eval_wer.py and the tests score a transcript: normalisation, WER/CER, and the floor.

Normalisation, for references and hypotheses alike: in English, German, French and Spanish
digits are first spelled as words (``num2words``: "seis" and "6" are one sound, and texts
write numbers either way); then Unicode NFC, lowercase, punctuation and symbols removed
(Unicode categories P* and S*; combining marks kept), whitespace collapsed; CER ignores
spaces. Every English row (synthetic, neural, people) then goes through whisper's own
``EnglishTextNormalizer`` (number words to digits, so "five five" and "5 5" are both "55";
contractions; British and American spelling: "colour" and "color" are one sound too).

:func:`perfect_phonemes` is a floor, not a model's reading: the lexicon search given each
reference's own pronunciation. Words said alike come out as the likelier spelling, so no
better acoustic model can score under it with the same lexicon.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata

import jiwer
import numpy as np

CER_LANGS = {"hi", "zh"}
SPELLED = {"en", "de", "fr", "es"}  # digits compared as words (num2words)
HUMAN = "human-en"  # the 12 pocketsphinx-testdata recordings of people
PEOPLE = "people-"  # rows of --people: f"people-{language}", Asterisk's voice talents (scripts/human_speech.py)
NEURAL = "neural-"  # rows of --neural: f"neural-{language}", Kokoro's blended speakers (scripts/kokoro_speech.py)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def spell_numbers(text: str, language: str) -> str:
    """Digits as words ("appuyez sur 1" -> "appuyez sur un"): texts write numbers either way, and
    the model writes them as digits."""
    from num2words import num2words

    return re.sub(r"\d+", lambda m: f" {num2words(int(m.group()), lang=language)} ", text)


@functools.cache
def english_normalizer():
    """whisper's ``EnglishTextNormalizer`` (transformers') with OpenAI's British-American spelling
    table, which transformers reads from a hub tokenizer's ``normalizer.json`` and which the
    ``whisper-normalizer`` package ships as ``normalizers/english.json``."""
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    table = files("whisper_normalizer").joinpath("normalizers/english.json").read_text(encoding="utf-8")
    return EnglishTextNormalizer(json.loads(table))


def error_rate(group: str, refs: list[str], hyps: list[str]) -> float:
    """WER (CER for Hindi and Mandarin) of a set, normalised as the module's docstring says."""
    language = "en" if group == HUMAN else group.removeprefix(NEURAL).removeprefix(PEOPLE)
    if language in SPELLED:
        refs, hyps = [spell_numbers(r, language) for r in refs], [spell_numbers(h, language) for h in hyps]
    refs = [normalize(r) for r in refs]
    hyps = [normalize(h) for h in hyps]
    if language == "en":
        english = english_normalizer()
        refs, hyps = [english(r) for r in refs], [english(h) for h in hyps]
    if language in CER_LANGS:
        return jiwer.cer([r.replace(" ", "") for r in refs], [h.replace(" ", "") for h in hyps])
    return jiwer.wer(refs, hyps)


def perfect_phonemes(model, rows: list[dict]) -> list[str | None]:
    """What the lexicon search writes from a perfect phoneme reading of each reference: its words
    said as the lexicon says them, one certain frame per phoneme. Its errors are words said alike
    written as the likelier one ("équipes" -> "équipe", "there" -> "their") and words the lexicon
    lacks: the floor no better posterior can go under with this lexicon and these weights. None
    for a row whose language is not searched in phonemes (Hindi and Mandarin are read in characters)."""
    from server.engine.lexicon import WORD_MARK_ID

    out: list[str | None] = []
    lexicon = model.lexicon
    for r in rows:
        language = r["language"]
        if lexicon is None or language not in lexicon.languages or not lexicon.reads_phones(language):
            out.append(None)
            continue
        frames: list[int] = []
        for word in normalize(r["text"]).split():
            said = lexicon.pronounce([word], language)
            for phone in said[0] if said else []:
                frames += [phone, 0]  # a blank after each, so a phoneme said twice stays two
            frames += [WORD_MARK_ID, 0]
        certain = np.full((max(1, len(frames)), len(lexicon.phones)), -30.0, np.float32)
        certain[np.arange(len(frames)), frames] = 0.0
        ids = lexicon.decode(None, language, phone_log_probs=certain) or []
        out.append(" ".join(model.tokenizer.decode(ids, skip_special_tokens=True).split()))
    return out
