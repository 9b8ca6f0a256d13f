"""The engine on tiny-random: batching, parity with transformers, cost, warm start, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from audio_fixtures import speech_with_pauses
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSamplerConfig,
)

from server.engine import (
    AudioTooLong,
    Engine,
    EngineError,
    EngineState,
    InvalidRequest,
    TranscribeRequest,
)
from server.engine import denoise as denoise_mod
from server.engine.denoise import run_batch
from server.engine.frames import embed_audio
from server.engine.spec import SamplerSettings
from server.engine.tiny import build_tiny_random
from server.engine.words import word_timings


@pytest.fixture(scope="module")
def model():
    return build_tiny_random(seed=0)


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


class DecoderCounter:
    """Counts decoder forward passes and the rows in each, via a forward pre-hook."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.first_canvas: torch.Tensor | None = None
        self._handle = model.backbone.model.decoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        canvas = kwargs["decoder_input_ids"]
        if self.first_canvas is None:
            self.first_canvas = canvas.clone()
        self.rows.append(canvas.shape[0])

    def close(self):
        self._handle.remove()


def test_engine_batch_gives_same_texts_as_single_requests_when_seeds_match(model):
    """Batching is invisible: each request's text depends only on its audio, steps, language and seed."""
    requests = [
        TranscribeRequest(_noise(0.7, 1), steps=3, seed=11),
        TranscribeRequest(_noise(3.2, 2), steps=16, seed=12, language="de"),
        TranscribeRequest(_noise(8.0, 3), steps=8, seed=13),
        TranscribeRequest(_noise(1.5, 4), steps=2, seed=14, language="hi"),
    ]
    batched = run_batch(model, requests)
    single = [run_batch(model, [r])[0] for r in requests]
    assert [b.canvas for b in batched] == [s.canvas for s in single]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.steps for b in batched] == [3, 16, 8, 2]
    assert len({b.canvas for b in batched}) == 4  # different inputs really give different outputs


def test_engine_batch_matches_single_requests_when_prompt_lengths_differ(model):
    """Requests whose prompts differ in length (language hint) are grouped and still match single runs."""
    hints = {"auto": "", "en": "<en>", "de": "<de> <de>"}
    other = dataclasses.replace(model, spec=dataclasses.replace(model.spec, language_hints=hints))
    requests = [TranscribeRequest(_noise(1.0, i), steps=4, seed=i, language=lang) for i, lang in
                enumerate([None, "en", "de", "en", None])]
    assert len({len(other.prompt_ids(r.language)) for r in requests}) == 3
    batched = run_batch(other, requests)
    single = [run_batch(other, [r])[0] for r in requests]
    assert [b.canvas for b in batched] == [s.canvas for s in single]


@pytest.mark.parametrize("steps", [2, 16])
def test_engine_output_equals_transformers_generate_when_seed_and_steps_match(model, steps):
    """Our denoising loop adds no drift: same tokens as DiffusionGemmaForBlockDiffusion.generate."""
    request = TranscribeRequest(_noise(2.5, 5), steps=steps, seed=1234)
    ours = run_batch(model, [request])[0]
    settings = model.spec.sampler
    with torch.inference_mode():
        embeds = embed_audio(model, [request.audio])
        prompt = torch.tensor([model.prompt_ids(None)])
        torch.manual_seed(request.seed)
        out = model.backbone.generate(
            prompt,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=embeds[0])},
            max_denoising_steps=steps,
            max_new_tokens=model.spec.canvas_length,
            t_min=settings.t_min,
            t_max=settings.t_max,
            sampler_config=EntropyBoundSamplerConfig(settings.entropy_bound),
            stability_threshold=settings.stability_threshold,
            confidence_threshold=settings.confidence_threshold,
        )
    theirs = out.sequences[0, prompt.shape[1]:].tolist()
    assert len(model.canvas_tokens(theirs)) > 3  # a real transcript, not an empty canvas
    assert model.canvas_tokens(theirs) == model.canvas_tokens(list(ours.canvas))
    assert ours.text == model.decode(theirs)


def test_engine_decoder_passes_follow_steps_not_transcript_length(model):
    """Cost is one decoder pass per step whatever the audio length or the text on the canvas."""
    no_stop = dataclasses.replace(model.spec, sampler=SamplerSettings(confidence_threshold=1e-12))
    m = dataclasses.replace(model, spec=no_stop)
    length = m.spec.canvas_length
    letters = m.tokenizer("a", add_special_tokens=False).input_ids[0]
    short_text = (letters,) * 2 + (m.eos_token_id,) * (length - 2)  # a 2-token transcript
    long_text = (letters,) * length  # a transcript filling the canvas
    counts = {}
    for audio_s in (0.5, 8.0):
        for name, canvas in (("short", short_text), ("long", long_text)):
            for steps in (2, 16):
                counter = DecoderCounter(m)
                try:
                    run_batch(m, [TranscribeRequest(_noise(audio_s, 9), steps=steps, start_canvas=canvas)])
                finally:
                    counter.close()
                counts[(audio_s, name, steps)] = len(counter.rows)
    assert {k: v for k, v in counts.items() if k[2] == 2} == {k: 2 for k in counts if k[2] == 2}
    assert {k: v for k, v in counts.items() if k[2] == 16} == {k: 16 for k in counts if k[2] == 16}


def test_engine_mixed_batch_releases_draft_rows_when_their_steps_are_done(model):
    """A 3-step draft beside a 16-step final costs 3 row-passes, not 16 (the batch is compacted)."""
    no_stop = dataclasses.replace(model.spec, sampler=SamplerSettings(confidence_threshold=1e-12))
    m = dataclasses.replace(model, spec=no_stop)
    counter = DecoderCounter(m)
    try:
        results = run_batch(m, [TranscribeRequest(_noise(1, 1), 3), TranscribeRequest(_noise(1, 2), 16)])
    finally:
        counter.close()
    assert [r.steps for r in results] == [3, 16]
    assert counter.rows == [2, 2, 2] + [1] * 13


def test_engine_warm_start_canvas_is_what_the_first_decoder_call_sees(model):
    """A start canvas replaces the random initial canvas in the very first decoder pass."""
    start = tuple(int(x) for x in np.random.default_rng(3).integers(10, 500, model.spec.canvas_length))
    counter = DecoderCounter(model)
    try:
        warm = run_batch(model, [TranscribeRequest(_noise(1, 1), steps=4, seed=5, start_canvas=start)])[0]
    finally:
        counter.close()
    assert counter.first_canvas[0].tolist() == list(start)
    cold = run_batch(model, [TranscribeRequest(_noise(1, 1), steps=4, seed=5)])[0]
    assert warm.canvas != cold.canvas


def test_engine_refuses_audio_longer_than_the_window_with_clear_message(model):
    """Too-long audio is refused up front, naming both lengths and who splits audio."""
    with pytest.raises(AudioTooLong, match=r"8\.50 s .* at most 8 s per pass.*split it first"):
        run_batch(model, [TranscribeRequest(_noise(8.5, 1), steps=2)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be between 1 and"),
        ({"steps": 2, "language": "xx"}, "language 'xx' not supported"),
        ({"steps": 2, "start_canvas": (1, 2, 3)}, "start_canvas must be 32 token ids"),
    ],
)
def test_engine_rejects_invalid_requests_with_reason(model, kwargs, message):
    """Each kind of invalid request names what is wrong."""
    with pytest.raises(InvalidRequest, match=message):
        run_batch(model, [TranscribeRequest(_noise(1, 1), **kwargs)])


def test_engine_worker_warms_up_reports_ready_and_serves_batches():
    """The engine thread loads, warms up (one draft, one final), reports ready and serves."""
    engine = Engine(lambda: build_tiny_random(seed=0)).start()
    try:
        model = engine.wait_ready(60)
        assert engine.state is EngineState.READY
        assert engine.stats.warmup_seconds > 0
        results = engine.transcribe([TranscribeRequest(_noise(1, 1), 3, seed=1)], timeout=60)
        assert results[0].canvas == run_batch(model, [TranscribeRequest(_noise(1, 1), 3, seed=1)])[0].canvas
        assert engine.stats.batches == 1 and engine.stats.requests == 1
        with pytest.raises(AudioTooLong):
            engine.submit([TranscribeRequest(_noise(9, 1), 3)])
    finally:
        engine.close()
    assert engine.state is EngineState.CLOSED
    with pytest.raises(EngineError, match="closed"):
        engine.submit([TranscribeRequest(_noise(1, 1), 3)])


def test_engine_worker_survives_a_failing_batch(monkeypatch):
    """A batch that raises fails only its own future; the next batch is served."""
    real = denoise_mod.run_batch
    calls = {"n": 0}

    def flaky(model, requests):
        calls["n"] += 1
        if calls["n"] == 2:  # first call is the warm-up
            raise RuntimeError("device fault injected by the test")
        return real(model, requests)

    monkeypatch.setattr("server.engine.runner.run_batch", flaky)
    engine = Engine(lambda: build_tiny_random(seed=0)).start()
    try:
        engine.wait_ready(60)
        failed = engine.submit([TranscribeRequest(_noise(1, 1), 2)])
        ok = engine.submit([TranscribeRequest(_noise(1, 2), 2)])
        with pytest.raises(RuntimeError, match="device fault injected"):
            failed.result(60)
        assert ok.result(60)[0].steps == 2
        assert engine.stats.failed_batches == 1
    finally:
        engine.close()


def test_engine_load_failure_is_reported_by_wait_ready():
    """A model that fails to load leaves the engine FAILED with the original error."""
    def broken():
        raise ValueError("no weights here")

    engine = Engine(broken).start()
    with pytest.raises(ValueError, match="no weights here"):
        engine.wait_ready(30)
    assert engine.state is EngineState.FAILED
    engine.close()


def test_word_timings_give_one_ordered_span_per_word_inside_the_audio(model) -> None:
    """A transcript's tokens aligned to the audio embeddings: one timing per word, in order, inside
    the audio (tiny-random's lm_head cannot read audio, so only the mechanics are checked here)."""
    audio = speech_with_pauses([0.3, "Hello there, how are you today?", 0.5])[0]
    embeds = embed_audio(model, [audio])[0]
    canvas = model.tokenizer("hello there you", add_special_tokens=False).input_ids + [model.eos_token_id, 0, 0]
    seconds = len(audio) / 16000
    words = word_timings(model, embeds, canvas, seconds / embeds.shape[0], seconds)
    assert [w.word for w in words] == ["hello", "there", "you"]
    spans = [(w.start, w.end) for w in words]
    assert all(0 <= a < b <= seconds + 1e-6 for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert all(0 < w.confidence <= 1 for w in words)


def test_only_requests_that_ask_for_word_timings_pay_for_them(model) -> None:
    audio = speech_with_pauses([0.3, "Hello there.", 0.5])[0]
    timed, plain = run_batch(model, [TranscribeRequest(audio, 4, "en", seed=3, word_timings=True),
                                     TranscribeRequest(audio, 4, "en", seed=3)])
    assert plain.words == () and timed.text == plain.text
    # tiny-random's noise text has more tokens than the audio has slots: no alignment, no words
    assert [w.word for w in timed.words] in ([], timed.text.split())
