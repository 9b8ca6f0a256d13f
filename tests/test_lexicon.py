"""Lexicon decoding (flashlight-text): a CTC reading spelled by ear comes out as lexicon words."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math

import numpy as np
import pytest
import torch

from server.engine import TranscribeRequest, load_model
from server.engine.denoise import ctc_canvases, run_batch
from server.engine.frames import embed_audio, read_audio
from server.engine.lexicon import (
    LEXICON_DIR,
    PHONES_FILE,
    WEIGHTS_FILE,
    LexiconDecoding,
    LexiconWeights,
)
from server.engine.loader import ModelLoadError
from server.engine.projector import AudioProjector
from server.engine.tiny import build_char_tokenizer, build_tiny_random
from server.engine.words import phone_timings

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
    german = decoding.detect(_emissions(tokenizer, "halo welt", blank), "halo welt")
    english = decoding.detect(_emissions(tokenizer, "helo wrld", blank), "helo wrld")
    assert german[0] == "de" and tokenizer.decode(german[1]) == "hallo welt"
    assert english[0] == "en" and tokenizer.decode(english[1]) == "hello world"
    assert decoding.detect(_emissions(tokenizer, "你好", blank), "你好") is None
    assert decoding.detect(_emissions(tokenizer, " ", blank), "") is None


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
    assert decoding.detect(emissions, greedy)[0] == "zh"
    assert tokenizer.decode(decoding.detect(emissions, greedy)[1]) == "你好世界"
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


PHONES = ["<blank>", "|", "ð", "ə", "n", "aɪ", "t", "s", "k"]
SAID = {"the": ("ð ə", -1.0), "night": ("n aɪ t", -3.0), "knight": ("n aɪ t", -6.0), "nice": ("n aɪ s", -5.0)}


def phone_emissions(said: str, phones: list[str] = PHONES) -> np.ndarray:
    """Phoneme log-probabilities: each phoneme of ``said`` (``|`` between words) likely in its own frame, then a blank."""
    frames = []
    for phone in said.split():
        for target in (phones.index(phone), 0):
            row = np.full(len(phones), math.log(0.02 / len(phones)), dtype=np.float32)
            row[target] = math.log(0.9)
            frames.append(row)
    return np.stack(frames)


def _phone_lexicon(folder):
    folder.mkdir(exist_ok=True)
    (folder / "en.tsv").write_text("".join(f"{w}\t{p}\t{said}\n" for w, (said, p) in SAID.items()))
    (folder / PHONES_FILE).write_text(json.dumps(PHONES))


def test_a_phoneme_reading_comes_out_as_the_words_spelled_that_are_said_that_way(tmp_path):
    """A language whose lexicon has phonemes (phones.json + a third column) is searched in the
    phoneme CTC, whatever the characters were guessed as: "n aɪ t" is spelled "night", the more
    frequent of the two words said so, and "n aɪ s" is "nice". A language without phonemes in
    its file (German here) keeps the character search."""
    folder = tmp_path / LEXICON_DIR
    _phone_lexicon(folder)
    (folder / "de.tsv").write_text("hallo\t-2.0\nwelt\t-2.5\n")
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    blank = tokenizer.pad_token_id
    decoding = LexiconDecoding.from_dir(folder, tokenizer, blank, beam_tokens=len(tokenizer))
    assert decoding.phones == PHONES and decoding.reads_phones("en") and not decoding.reads_phones("de")
    by_ear = _emissions(tokenizer, "ze nite", blank)
    assert tokenizer.decode(decoding.decode(by_ear, "en", phone_emissions("ð ə | n aɪ t"))) == "the night"
    assert tokenizer.decode(decoding.decode(by_ear, "en", phone_emissions("n aɪ s | ð ə"))) == "nice the"
    assert tokenizer.decode(decoding.decode(_emissions(tokenizer, "halo welt", blank), "de",
                                            phone_emissions("n aɪ s"))) == "hallo welt"
    with pytest.raises(ValueError, match="spelled in phonemes"):
        decoding.decode(by_ear, "en")
    with pytest.raises(ValueError, match="blank then"):
        LexiconDecoding(tokenizer, tokenizer.pad_token_id, decoding.files, phones=["<blank>", "n", "|"])


def test_words_the_lexicon_says_are_timed_and_scored_in_the_phonemes_they_were_heard_in(tmp_path):
    """A word heard as "n aɪ t" is aligned to those phonemes: its confidence is how surely they
    were heard, whatever its letters would align to; a transcript with a word the lexicon does
    not say gets no phonemes (the caller aligns characters instead)."""
    folder = tmp_path / LEXICON_DIR
    _phone_lexicon(folder)
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    decoding = LexiconDecoding.from_dir(folder, tokenizer, tokenizer.pad_token_id)
    said = decoding.pronounce(["the", "night"], "en")
    assert said == [[2, 3], [4, 5, 6]] and decoding.pronounce(["the", "night"], None) == said
    assert decoding.pronounce(["the", "day"], "en") is None and decoding.pronounce(["the"], "de") is None
    heard = phone_emissions("ð ə | n aɪ t")  # 12 frames of 0.1 s: a phoneme, a blank, ...
    timed = phone_timings(heard, ["the", "night"], said, 0.1, 1.2)
    assert [(w.word, w.start, w.end) for w in timed] == [("the", 0.0, 0.4), ("night", 0.6, 1.1)]
    assert all(w.confidence > 0.85 for w in timed)
    misheard = phone_timings(phone_emissions("ð ə | k aɪ s"), ["the", "night"], said, 0.1, 1.2)
    assert misheard[0].confidence > 0.85 and misheard[1].confidence < 0.5


def test_a_model_with_a_phoneme_head_decodes_through_its_phoneme_lexicon_and_a_mismatch_fails_to_load(tmp_path):
    model = build_tiny_random(seed=0)
    config = dataclasses.replace(model.spec.projector, phones=len(PHONES))
    spec = dataclasses.replace(model.spec, canvas_start="ctc", final_steps=1, projector=config)
    torch.manual_seed(0)
    model = dataclasses.replace(model, spec=spec, projector=AudioProjector(config))
    folder = tmp_path / "model"
    model.save(folder)
    _phone_lexicon(folder / LEXICON_DIR)
    loaded = load_model(str(folder), "cpu")
    assert loaded.lexicon is not None and loaded.lexicon.phones == PHONES
    loaded.lexicon.beam_tokens = len(PHONES)
    audio = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    with torch.inference_mode():
        embeds, phones = read_audio(loaded, [audio, audio])
        assert phones is not None and phones.shape == (*embeds.shape[:2], len(PHONES))
        hinted, plain = ctc_canvases(loaded, embeds, ["en", None], phones).tolist()
        with pytest.raises(ValueError, match="spelled in phonemes"):
            ctc_canvases(loaded, embeds, ["en", None])

    def text(canvas: list[int]) -> str:
        return loaded.tokenizer.decode(canvas[: canvas.index(loaded.eos_token_id)])

    # random weights read noise; through the phoneme lexicon only its words come out, spelled
    assert text(hinted).split() and set(text(hinted).split()) <= set(SAID)
    assert not set(text(plain).split()) <= set(SAID)  # no hint: no lexicon's alphabet covers the greedy reading
    results = run_batch(loaded, [TranscribeRequest(audio, 1, "en", seed=1), TranscribeRequest(audio, 1, None, seed=1)])
    assert len(results) == 2 and all(r.steps == 1 for r in results)
    (folder / LEXICON_DIR / PHONES_FILE).unlink()
    with pytest.raises(ModelLoadError, match="spelled in no phonemes, but the projector reads 9 phonemes"):
        load_model(str(folder), "cpu")


def test_without_a_hint_a_reading_no_lexicon_fits_starts_empty_when_every_language_has_one(tmp_path, lexicon_dir):
    """Babble read as a jumble of scripts ("eे d e े cetes") fits no lexicon's alphabet; when every
    language the model knows has a lexicon, that is no speech it knows, and the canvas starts
    empty instead of from the jumble. A model with languages that lack a lexicon keeps it."""
    model = build_tiny_random(seed=0)
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, canvas_start="ctc", final_steps=1))
    audio = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    plains = {}
    for languages in (("en",), model.spec.languages):
        folder = tmp_path / "-".join(languages)
        dataclasses.replace(model, spec=dataclasses.replace(model.spec, languages=languages)).save(folder)
        (folder / LEXICON_DIR).mkdir()
        (folder / LEXICON_DIR / "en.tsv").write_text((lexicon_dir / "en.tsv").read_text())
        loaded = load_model(str(folder), "cpu")
        with torch.inference_mode():
            canvas = ctc_canvases(loaded, embed_audio(loaded, [audio]), [None])[0].tolist()
        plains[languages] = loaded.tokenizer.decode(canvas[: canvas.index(loaded.eos_token_id)])
    assert plains[("en",)] == ""
    assert plains[model.spec.languages].strip() and not set(plains[model.spec.languages].split()) <= set(WORDS)


def test_more_words_said_alike_than_the_trie_holds_keep_the_likeliest_and_print_nothing(tmp_path, capfd):
    """flashlight's trie holds six words per spelling and complains on stderr about each further
    one (the demo's phoneme lexicons printed 158 such lines at every start). The lexicon keeps
    the six likeliest itself: the first in its file, as the trie did, and nothing is printed."""
    folder = tmp_path / LEXICON_DIR
    folder.mkdir()
    (folder / PHONES_FILE).write_text(json.dumps(PHONES))
    words = ["nite", "night", "knight", "nyte", "nait", "naight", "knite", "nighte"]  # all "n aɪ t"
    (folder / "en.tsv").write_text("".join(f"{w}\t{-1.0 - i}\tn aɪ t\n" for i, w in enumerate(words)))
    tokenizer = build_char_tokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    decoding = LexiconDecoding.from_dir(folder, tokenizer, tokenizer.pad_token_id, beam_tokens=len(tokenizer))
    decoding.prepare()
    assert "Trie" not in capfd.readouterr().err
    assert tokenizer.decode(decoding.decode(None, "en", phone_emissions("n aɪ t"))) == "nite"
