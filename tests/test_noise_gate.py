"""The noise gate: a short transcript barely in its audio (what a model makes of noise) comes back empty."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from server.core.requests import WordTiming
from server.engine import TranscribeRequest
from server.engine.denoise import run_batch
from server.engine.spec import ModelSpec, NoiseGate
from server.engine.tiny import build_tiny_random
from server.engine.words import below_gate, is_short, text_width


@pytest.fixture(scope="module")
def model():
    return build_tiny_random(seed=0)


def _with_gate(model, gate: NoiseGate):
    return dataclasses.replace(model, spec=dataclasses.replace(model.spec, noise_gate=gate))


def _request(seed: int) -> TranscribeRequest:
    audio = (np.random.default_rng(seed).standard_normal(32000) * 0.1).astype(np.float32)
    return TranscribeRequest(audio=audio, steps=2, seed=seed)


def test_gate_compares_the_mean_word_confidence_with_its_threshold():
    gate = NoiseGate(max_chars=2, min_confidence=0.5)
    words = (WordTiming("a", 0.0, 0.1, 0.3), WordTiming("b", 0.2, 0.3, 0.6))
    assert below_gate(gate, "a b", words, 1.0)  # mean 0.45
    assert not below_gate(NoiseGate(max_chars=2, min_confidence=0.44), "a b", words, 1.0)
    assert below_gate(gate, "a b", (), 1.0)  # text that cannot be aligned to the audio is not speech


def test_too_little_text_for_its_seconds_of_sound_is_below_the_gate_however_confident():
    """One confident "7" out of 2 s of babble is noise; a spoken "seven" is a second long."""
    gate = NoiseGate(max_chars=6, min_confidence=0.5, min_chars_per_second=1.3)
    seven = (WordTiming("7", 0.4, 0.42, 0.9),)
    assert below_gate(gate, "7", seven, 2.15)
    assert not below_gate(gate, "7", seven, 1.2)
    assert not below_gate(dataclasses.replace(gate, min_chars_per_second=0.0), "7", seven, 2.15)
    assert not below_gate(gate, "好", (WordTiming("好", 0.4, 0.42, 0.9),), 1.2)  # a Hanzi counts two
    assert below_gate(gate, "a", (WordTiming("a", 0.4, 0.42, 0.9),), 1.2)  # a letter one


def test_a_hanzi_and_a_digit_count_two_in_the_width_the_gate_limits():
    assert [text_width(t) for t in ("是收养", "a b", "नहीं", "", "5 5", "१२")] == [6, 2, 4, 0, 4, 4]
    gate = NoiseGate(max_chars=6, min_confidence=0.4, min_chars_per_second=1.3)
    fives = (WordTiming("5", 0.34, 0.36, 0.31), WordTiming("5", 0.94, 0.96, 0.96))
    assert not below_gate(gate, "5 5", fives, 1.55)  # "five five" said by a person (pocketsphinx cards-004)
    assert below_gate(gate, "7", (WordTiming("7", 0.4, 0.42, 0.9),), 2.15)  # one "7" out of 2 s of babble
    gate = NoiseGate(max_chars=4, min_confidence=0.5)
    assert [is_short(gate, t) for t in ("好", "谢谢", "是收养", "nein", "danke", "")] == [True, True, False, True, False, False]
    assert not is_short(NoiseGate(), "a")  # max_chars 0: off


def test_a_gated_short_transcript_comes_back_empty_with_no_words(model):
    plain = run_batch(model, [_request(s) for s in range(3)])
    assert all(r.text for r in plain), "tiny-random always writes something"
    longest = max(text_width(r.text) for r in plain)
    gated = run_batch(_with_gate(model, NoiseGate(max_chars=longest, min_confidence=1.01)),
                      [dataclasses.replace(_request(s), word_timings=True) for s in range(3)])
    assert [(r.text, r.words) for r in gated] == [("", ())] * 3
    assert [r.steps for r in gated] == [r.steps for r in plain]


def test_the_gate_leaves_longer_transcripts_and_confident_ones_alone(model):
    plain = run_batch(model, [_request(s) for s in range(3)])
    shortest = min(text_width(r.text) for r in plain)
    too_short = run_batch(_with_gate(model, NoiseGate(max_chars=shortest - 1, min_confidence=1.01)),
                          [_request(s) for s in range(3)])
    assert [r.text for r in too_short] == [r.text for r in plain]
    off = run_batch(_with_gate(model, NoiseGate(max_chars=0, min_confidence=1.01)), [_request(s) for s in range(3)])
    assert [r.text for r in off] == [r.text for r in plain]


def test_noise_gate_round_trips_through_dgasr_json():
    gate = NoiseGate(max_chars=2, min_confidence=0.5, min_chars_per_second=0.75)
    assert ModelSpec.from_dict(ModelSpec(name="x", parts={}, noise_gate=gate).to_dict()).noise_gate == gate
    assert ModelSpec.from_dict({"name": "x", "parts": {}}).noise_gate == NoiseGate()
