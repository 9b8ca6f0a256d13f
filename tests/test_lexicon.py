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
from server.engine.lexicon import LEXICON_DIR, LexiconDecoding
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
