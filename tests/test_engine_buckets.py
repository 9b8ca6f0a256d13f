"""Cost follows the audio: a model with ``encoder_bucket_seconds`` encodes each request at its own length."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine import TranscribeRequest
from server.engine.denoise import run_batch
from server.engine.frames import encode, log_mel
from server.engine.spec import ModelSpec
from server.engine.tiny import build_tiny_random


@pytest.fixture(scope="module")
def bucketed():
    model = build_tiny_random(seed=0)
    model.spec = dataclasses.replace(model.spec, encoder_bucket_seconds=1.0)
    return model


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


class EncoderFrames:
    """Records the mel length of every whisper conv1 call."""

    def __init__(self, model):
        self.lengths: list[tuple[int, int]] = []
        self._handle = model.whisper.conv1.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.lengths.append((args[0].shape[0], args[0].shape[-1]))

    def close(self):
        self._handle.remove()


def test_a_short_request_is_encoded_at_its_own_bucket_not_the_window(bucketed):
    seen = EncoderFrames(bucketed)
    try:
        run_batch(bucketed, [TranscribeRequest(_noise(1.6, 1), steps=2)])
    finally:
        seen.close()
    assert seen.lengths == [(1, 200)]  # 2 s of mel frames, not the 8 s window's 800


def test_mixed_lengths_run_as_one_group_per_bucket_and_equal_single_requests(bucketed):
    requests = [
        TranscribeRequest(_noise(0.7, 1), steps=3, seed=11),
        TranscribeRequest(_noise(3.2, 2), steps=4, seed=12, language="de"),
        TranscribeRequest(_noise(0.9, 3), steps=2, seed=13),
        TranscribeRequest(_noise(8.0, 4), steps=2, seed=14, language="hi"),
    ]
    seen = EncoderFrames(bucketed)
    try:
        batched = run_batch(bucketed, requests)
    finally:
        seen.close()
    assert sorted(seen.lengths) == [(1, 400), (1, 800), (2, 100)]
    single = [run_batch(bucketed, [r])[0] for r in requests]
    assert [b.canvas for b in batched] == [s.canvas for s in single]


def test_prompt_audio_slots_follow_the_bucket(bucketed):
    spec = bucketed.spec
    assert spec.audio_slots(16000) == spec.projector.output_frames(50)
    assert spec.audio_slots(int(7.5 * 16000)) == spec.projector.output_frames(400) == spec.audio_tokens
    short = bucketed.prompt_ids("en", spec.audio_slots(16000))
    full = bucketed.prompt_ids("en")
    assert len(full) - len(short) == spec.audio_tokens - spec.audio_slots(16000)


def test_a_padded_window_model_keeps_whisper_padding():
    spec = build_tiny_random(seed=0).spec
    assert spec.encoder_bucket_seconds == 0
    assert spec.encoder_samples(16000) == spec.window_samples
    assert spec.audio_slots(16000) == spec.audio_tokens


def test_encode_at_the_full_window_is_transformers_own_forward():
    model = build_tiny_random(seed=0)
    features = log_mel(model.feature_extractor, [_noise(3.0, 5)], model.spec.window_samples)
    with torch.inference_mode():
        assert torch.equal(encode(model.whisper, features), model.whisper(features).last_hidden_state)


def test_bucket_seconds_outside_the_window_is_refused():
    with pytest.raises(ValueError, match="encoder_bucket_seconds"):
        ModelSpec(name="x", parts={}, window_seconds=8.0, encoder_bucket_seconds=9.0)
    spec = ModelSpec(name="x", parts={}, window_seconds=8.0, encoder_bucket_seconds=2.0)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_the_engine_hears_in_the_model_audio_dtype_and_denoises_in_the_backbone_dtype(bucketed):
    """With ``audio_dtype`` bf16 the whisper layers' and the projector's matmuls run in bf16, in the
    engine's batches and in ``read_audio`` alike, and the backbone still gets float32 embeddings."""
    from server.engine.frames import read_audio

    seen: list[torch.dtype] = []
    hooks = [module.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
             for module in (bucketed.whisper.layers[0].fc1, bucketed.projector.proj)]
    audio = _noise(1.5, 3)
    try:
        for dtype, expected in ((None, torch.float32), (torch.bfloat16, torch.bfloat16)):
            model = dataclasses.replace(bucketed, audio_dtype=dtype)
            seen.clear()
            result = run_batch(model, [TranscribeRequest(audio, steps=2, seed=0)])[0]
            assert seen == [expected, expected] and result.steps == 2
            seen.clear()
            with torch.inference_mode():
                embeds, _ = read_audio(model, [audio])
            assert seen == [expected, expected] and embeds.dtype == torch.float32
    finally:
        for hook in hooks:
            hook.remove()
