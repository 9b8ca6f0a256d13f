"""Lexicon decoding (flashlight-text): a CTC reading spelled by ear comes out as lexicon words."""

from __future__ import annotations

import dataclasses
import gzip
import math

import numpy as np
import pytest
import torch

from server.engine import TranscribeRequest, load_model
from server.engine.denoise import ctc_canvases, run_batch
from server.engine.frames import embed_audio
from server.engine.lexicon import (
    LEXICON_DIR,
    WEIGHTS_FILE,
    LexiconDecoding,
    LexiconWeights,
)
from server.engine.tiny import build_char_tokenizer, build_tiny_random

WORDS = {"hello": -2.0, "world": -2.5, "help": -3.0, "word": -3.0, "old": -4.0}


@pytest.fixture
def lexicon_dir(tmp_path):
    folder = tmp_path / LEXICON_DIR
    folder.mkdir()
    (folder / "en.tsv").write_text("".join(f"{w}\t{p}\n" for w, p in WORDS.items()))
    return folder


def _emissions(tokenizer, spelled: str, blank: int) -> np.ndarray:
    """Log-probabilities with each character of ``spelled`` likely in its own frame, then two blanks
    (real CTC readings have several frames per character, which is what lets a word insert one)."""
    vocab = len(tokenizer)
    frames = []
    for ch in spelled:
        for target in (tokenizer.convert_tokens_to_ids(ch), blank, blank):
            row = np.full(vocab, math.log(0.02 / vocab), dtype=np.float32)
            row[target] = math.log(0.9)
            frames.append(row)
    return np.stack(frames)


def test_a_spelling_by_ear_decodes_to_the_nearest_lexicon_words(lexicon_dir):
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    blank = tokenizer.pad_token_id
    # every token per frame: in these made-up emissions all unlikely tokens tie
    decoding = LexiconDecoding.from_dir(lexicon_dir, tokenizer, blank, beam_tokens=len(tokenizer))
    assert decoding.languages == ["en"]
    ids = decoding.decode(_emissions(tokenizer, "helo wrld", blank), "en")
    assert tokenizer.decode(ids) == "hello world"
    exact = decoding.decode(_emissions(tokenizer, "help old", blank), "en")
    assert tokenizer.decode(exact) == "help old"
    assert decoding.decode(_emissions(tokenizer, "helo", blank), "zh") is None  # no lexicon: the caller keeps greedy


def test_a_model_directory_with_a_lexicon_loads_it_and_its_ctc_canvases_use_it(tmp_path, lexicon_dir):
    model = build_tiny_random(seed=0)
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, canvas_start="ctc", final_steps=1))
    folder = tmp_path / "model"
    model.save(folder)
    (folder / LEXICON_DIR).mkdir()
    (folder / LEXICON_DIR / "en.tsv").write_text((lexicon_dir / "en.tsv").read_text())
    loaded = load_model(str(folder), "cpu")
    assert loaded.lexicon is not None and loaded.lexicon.languages == ["en"]
    loaded.lexicon.beam_tokens = len(loaded.tokenizer)  # tiny-random's likeliest 16 tokens are never letters
    audio = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    with torch.inference_mode():
        embeds = embed_audio(loaded, [audio, audio])
        hinted, plain = ctc_canvases(loaded, embeds, ["en", None]).tolist()

    def text(canvas: list[int]) -> str:
        return loaded.tokenizer.decode(canvas[: canvas.index(loaded.eos_token_id)])

    # tiny-random reads noise: greedily that is noise, through the lexicon only its words
    assert text(hinted).split() and all(w in WORDS for w in text(hinted).split())
    assert not all(w in WORDS for w in text(plain).split())
    results = run_batch(loaded, [TranscribeRequest(audio, 1, "en", seed=1), TranscribeRequest(audio, 1, None, seed=1)])
    assert len(results) == 2 and all(r.steps == 1 for r in results)


def test_without_a_hint_the_lexicon_that_fits_the_audio_wins_and_an_uncovered_script_keeps_greedy(tmp_path):
    """Automatic language: each lexicon whose alphabet covers the greedy reading decodes; the
    best score wins. Audio read in letters no lexicon has (Mandarin here) keeps the greedy reading."""
    folder = tmp_path / LEXICON_DIR
    folder.mkdir()
    (folder / "en.tsv").write_text("".join(f"{w}\t{p}\n" for w, p in WORDS.items()))
    (folder / "de.tsv.gz").write_bytes(gzip.compress(b"hallo\t-2.0\nwelt\t-2.5\nhelfen\t-3.0\n"))  # as shipped
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz 你好"))
    blank = tokenizer.pad_token_id
    decoding = LexiconDecoding.from_dir(folder, tokenizer, blank, beam_tokens=len(tokenizer))
    assert decoding.languages == ["de", "en"]
    german = decoding.decode_any(_emissions(tokenizer, "halo welt", blank), "halo welt")
    english = decoding.decode_any(_emissions(tokenizer, "helo wrld", blank), "helo wrld")
    assert tokenizer.decode(german) == "hallo welt"
    assert tokenizer.decode(english) == "hello world"
    assert decoding.decode_any(_emissions(tokenizer, "你好", blank), "你好") is None
    assert decoding.decode_any(_emissions(tokenizer, " ", blank), "") is None


def test_a_language_without_spaces_decodes_into_its_words_joined_without_one(tmp_path):
    """Mandarin: a frame torn between two characters that sound alike (世/市) is settled by the
    words the lexicon knows, and the words come out joined with no space."""
    folder = tmp_path / LEXICON_DIR
    folder.mkdir()
    (folder / "zh.tsv").write_text("你好\t-2.0\n世界\t-2.5\n市\t-6.0\n界\t-7.0\n是\t-3.0\n")
    tokenizer = build_char_tokenizer(list("你好世界市是 "))
    blank = tokenizer.pad_token_id
    decoding = LexiconDecoding.from_dir(folder, tokenizer, blank, beam_tokens=len(tokenizer))
    emissions = _emissions(tokenizer, "你好市界", blank)
    torn = emissions[6].copy()  # the third character's frame: 市 a little likelier than 世
    torn[tokenizer.convert_tokens_to_ids("市")] = math.log(0.5)
    torn[tokenizer.convert_tokens_to_ids("世")] = math.log(0.4)
    emissions[6] = torn
    greedy = "".join(tokenizer.convert_ids_to_tokens([int(i) for i in emissions.argmax(-1) if i != blank]))
    assert greedy == "你好市界"
    assert tokenizer.decode(decoding.decode(emissions, "zh")) == "你好世界"
    assert tokenizer.decode(decoding.decode_any(emissions, greedy)) == "你好世界"
    assert tokenizer.decode(decoding.decode(_emissions(tokenizer, "是你好", blank), "zh")) == "是你好"


def test_tuned_weights_saved_beside_the_lexicon_change_how_much_word_frequency_counts(tmp_path):
    """``lexicon/weights.json`` (written by scripts/tune_lexicon.py) is read by from_dir: a
    heavier lm_weight (with a word bonus that keeps words worth emitting) lets the far more
    frequent "hello" beat the exactly spoken "help"."""
    folder = tmp_path / LEXICON_DIR
    folder.mkdir()
    (folder / "en.tsv").write_text("hello\t-1.0\nhelp\t-6.0\n")
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    blank = tokenizer.pad_token_id
    spoken = _emissions(tokenizer, "help", blank)
    plain = LexiconDecoding.from_dir(folder, tokenizer, blank, beam_tokens=len(tokenizer))
    assert plain.weights == {} and tokenizer.decode(plain.decode(spoken, "en")) == "help"
    path = plain.write_weights({"en": LexiconWeights(lm_weight=5.0, word_score=10.0)})
    assert path == folder / WEIGHTS_FILE
    tuned = LexiconDecoding.from_dir(folder, tokenizer, blank, beam_tokens=len(tokenizer))
    assert tuned.weights == {"en": LexiconWeights(5.0, 10.0)}
    assert tokenizer.decode(tuned.decode(spoken, "en")) == "hello"
    tuned.set_weights({})
    assert tokenizer.decode(tuned.decode(spoken, "en")) == "help"
