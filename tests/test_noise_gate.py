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
from server.engine.words import below_gate


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
    assert below_gate(gate, words)  # mean 0.45
    assert not below_gate(NoiseGate(max_chars=2, min_confidence=0.44), words)
    assert below_gate(gate, ())  # text that cannot be aligned to the audio is not speech


def test_a_gated_short_transcript_comes_back_empty_with_no_words(model):
    plain = run_batch(model, [_request(s) for s in range(3)])
    assert all(r.text for r in plain), "tiny-random always writes something"
    longest = max(len(r.text.replace(" ", "")) for r in plain)
    gated = run_batch(_with_gate(model, NoiseGate(max_chars=longest, min_confidence=1.01)),
                      [dataclasses.replace(_request(s), word_timings=True) for s in range(3)])
    assert [(r.text, r.words) for r in gated] == [("", ())] * 3
    assert [r.steps for r in gated] == [r.steps for r in plain]


def test_the_gate_leaves_longer_transcripts_and_confident_ones_alone(model):
    plain = run_batch(model, [_request(s) for s in range(3)])
    shortest = min(len(r.text.replace(" ", "")) for r in plain)
    too_short = run_batch(_with_gate(model, NoiseGate(max_chars=shortest - 1, min_confidence=1.01)),
                          [_request(s) for s in range(3)])
    assert [r.text for r in too_short] == [r.text for r in plain]
    off = run_batch(_with_gate(model, NoiseGate(max_chars=0, min_confidence=1.01)), [_request(s) for s in range(3)])
    assert [r.text for r in off] == [r.text for r in plain]


def test_noise_gate_round_trips_through_dgasr_json():
    spec = ModelSpec(name="x", parts={}, noise_gate=NoiseGate(max_chars=2, min_confidence=0.5))
    assert ModelSpec.from_dict(spec.to_dict()).noise_gate == NoiseGate(max_chars=2, min_confidence=0.5)
    assert ModelSpec.from_dict({"name": "x", "parts": {}}).noise_gate == NoiseGate()
