"""The ``canvas_start="ctc"`` option: the denoiser begins from the greedy CTC reading of the audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine import TranscribeRequest
from server.engine.denoise import ctc_canvases, run_batch
from server.engine.spec import ModelSpec
from server.engine.tiny import build_tiny_random


@pytest.fixture(scope="module")
def model():
    return build_tiny_random(seed=0)


def _self_reading_ids(model, count: int) -> list[int]:
    """Token ids whose own embedding row is read back as that id by the tied lm_head."""
    weight = model.backbone.get_input_embeddings().weight.detach()
    reads = model.backbone.lm_head(weight).argmax(-1)
    found = [i for i in range(10, weight.shape[0]) if reads[i] == i and i != model.eos_token_id][:count]
    assert len(found) == count, "the tiny model should have enough self-reading rows"
    return found


def _embeds(model, frames: list[int]) -> torch.Tensor:
    weight = model.backbone.get_input_embeddings().weight.detach()
    return weight[torch.tensor(frames)].unsqueeze(0)


def test_ctc_canvas_merges_repeats_drops_blanks_and_closes_with_eos(model):
    a, b, c = _self_reading_ids(model, 3)
    blank = model.backbone.config.text_config.pad_token_id
    frames = [blank, a, a, blank, b, b, a, blank, blank, c, c]
    canvas = ctc_canvases(model, _embeds(model, frames))[0].tolist()
    length = model.spec.canvas_length
    assert canvas == [a, b, a, c, model.eos_token_id] + [blank] * (length - 5)


def test_ctc_canvas_keeps_a_repeated_token_separated_by_blank(model):
    (a,) = _self_reading_ids(model, 1)
    blank = model.backbone.config.text_config.pad_token_id
    canvas = ctc_canvases(model, _embeds(model, [a, blank, a]))[0].tolist()
    assert canvas[:3] == [a, a, model.eos_token_id]


def test_ctc_canvas_is_cut_to_leave_room_for_eos(model):
    ids = _self_reading_ids(model, 2)
    length = model.spec.canvas_length
    frames = [ids[i % 2] for i in range(length + 10)]  # alternating: every frame is a new token
    canvas = ctc_canvases(model, _embeds(model, frames))[0].tolist()
    assert len(canvas) == length
    assert canvas[:-1] == frames[: length - 1]
    assert canvas[-1] == model.eos_token_id


def test_ctc_start_model_denoises_from_its_ctc_canvas(model):
    """With canvas_start="ctc" a cold request behaves exactly like a warm start from the CTC canvas."""
    ctc_model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, canvas_start="ctc"))
    audio = (np.random.default_rng(4).standard_normal(16000) * 0.1).astype(np.float32)
    seen: list[torch.Tensor] = []
    hook = model.backbone.model.decoder.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["decoder_input_ids"].clone()), with_kwargs=True)
    try:
        cold = run_batch(ctc_model, [TranscribeRequest(audio, steps=3, seed=2)])[0]
    finally:
        hook.remove()
    with torch.inference_mode():
        feats = ctc_model.feature_extractor([audio], sampling_rate=16000, return_tensors="pt",
                                            padding="max_length").input_features
        expected = ctc_canvases(ctc_model, ctc_model.projector(ctc_model.whisper(feats).last_hidden_state))[0]
    assert seen[0][0].tolist() == expected.tolist()
    warm = run_batch(model, [TranscribeRequest(audio, steps=3, seed=2, start_canvas=tuple(expected.tolist()))])[0]
    assert cold.canvas == warm.canvas


def test_spec_canvas_start_round_trips_and_rejects_unknown_values():
    spec = ModelSpec(name="x", parts={}, canvas_start="ctc")
    assert ModelSpec.from_dict(spec.to_dict()).canvas_start == "ctc"
    assert ModelSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "canvas_start"}).canvas_start == "random"
    with pytest.raises(ValueError, match="canvas_start must be one of random, ctc"):
        ModelSpec(name="x", parts={}, canvas_start="silence")


def test_a_canvas_started_from_the_reading_keeps_its_tokens_where_the_denoiser_is_not_sure(model):
    """``keep_start_below``: each final token is the denoiser's choice where that choice is at
    least that probable, else the start canvas's token; a random start has nothing to keep."""
    audio = (np.random.default_rng(7).standard_normal(24000) * 0.1).astype(np.float32)

    def final(canvas_start: str, keep: float) -> list[int]:
        sampler = dataclasses.replace(model.spec.sampler, keep_start_below=keep)
        spec = dataclasses.replace(model.spec, canvas_start=canvas_start, sampler=sampler)
        return list(run_batch(dataclasses.replace(model, spec=spec), [TranscribeRequest(audio, steps=1, seed=3)])[0].canvas)

    with torch.inference_mode():
        feats = model.feature_extractor([audio], sampling_rate=16000, return_tensors="pt",
                                        padding="max_length").input_features
        start = ctc_canvases(model, model.projector(model.whisper(feats).last_hidden_state))[0].tolist()
    chosen = final("ctc", 0.0)
    assert chosen != start  # random weights: the denoiser's choices differ from the reading
    assert final("ctc", 1.01) == start  # no choice is more than certain: every token kept
    half = final("ctc", 0.5)
    assert all(h in (s, c) for h, s, c in zip(half, start, chosen))
    assert any(h == s != c for h, s, c in zip(half, start, chosen))  # some kept where the choice was unsure
    assert final("random", 1.01) == final("random", 0.0)
