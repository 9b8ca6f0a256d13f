"""One batched transcription pass: features -> audio embeddings -> prompt KV cache -> denoise.

How this works
--------------
:func:`run_batch` takes requests from any number of sessions and runs them together:

1. Whisper log-mel features for every request, padded to the model's window or, for a
   model that declares ``encoder_bucket_seconds``, to its own length's bucket
   (:mod:`.frames`; one group per bucket).
2. Whisper encoder + projector per group -> audio embeddings, one per prompt audio slot.
3. Requests are grouped by prompt length (the language hint may change it) and each
   group's prompts, with the embeddings scattered into the audio placeholder slots, go
   through DiffusionGemma's causal encoder once, building the read-only KV cache.
4. Each row's canvas starts from its warm start if it has one, else from the model's
   ``canvas_start``: uniformly random tokens, or (``"ctc"``) the greedy CTC reading of
   its audio embeddings (:func:`ctc_canvases`).
5. The bidirectional decoder denoises every row's canvas, one forward pass per step for
   the whole group, with the transformers sampler pieces (temperature schedule, entropy-
   bound acceptance, stable-and-confident stopping) applied row by row.

Mixed step counts share a batch: every row starts at the first pass and runs its own
schedule (its temperature follows its own step count). A row leaves the batch as soon
as it has run its steps or adaptive stopping fires, and the batch and the KV cache are
compacted, so a 3-step draft beside a 16-step final costs 3 row-passes, not 16.

Every row draws from its own ``torch.Generator`` seeded by the request, in the same order
as ``DiffusionGemmaForBlockDiffusion.generate`` draws from the global RNG at batch size 1,
so a request's text does not depend on its batch-mates and equals ``generate``'s output
for the same seed (the tests pin both).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    LinearTemperatureScheduleLogitsProcessor,
    StableAndConfidentStoppingCriteria,
)

from server.core.pcm import SAMPLE_RATE
from server.core.requests import (
    AudioTooLong,
    InvalidRequest,
    PhaseTimings,
    TranscribeRequest,
    TranscribeResult,
)

from .frames import hear, log_mel
from .model import AsrModel
from .words import below_gate, is_short, word_timings

__all__ = ["validate_request", "run_batch", "encode_prompts", "ctc_canvases", "ctc_collapse", "denoise"]


class _SeededSampler(EntropyBoundSampler):
    """EntropyBoundSampler whose random canvases come from one generator per row."""

    generators: list[torch.Generator] = []

    def initialize_canvas(self, batch_size: int, device: torch.device) -> torch.LongTensor:
        assert batch_size == len(self.generators)
        return torch.cat(
            [
                torch.randint(0, self.vocab_size, (1, self.canvas_length), device=device, generator=g)
                for g in self.generators
            ]
        )


def _schedule(logits: torch.Tensor, remaining: list[int], totals: list[int], settings) -> torch.Tensor:
    """Each row's temperature from its own step count, in one division.

    Same arithmetic as transformers' LinearTemperatureScheduleLogitsProcessor (int32 step
    over step count, then t_min + (t_max - t_min) * ratio in float32), vectorised so that
    mixed step counts cost no extra copy of the logits. When every row has the same step
    count the processor itself is used.
    """
    device = logits.device
    if len(set(totals)) == 1 and len(set(remaining)) == 1:
        processor = LinearTemperatureScheduleLogitsProcessor(settings.t_min, settings.t_max, totals[0])
        return processor(None, logits, cur_step=torch.tensor(remaining[0], dtype=torch.int32, device=device))
    ratio = torch.tensor(remaining, dtype=torch.int32, device=device) / torch.tensor(totals, dtype=torch.int32, device=device)
    temperature = settings.t_min + (settings.t_max - settings.t_min) * ratio
    return logits / temperature[:, None, None]


def validate_request(model: AsrModel, request: TranscribeRequest) -> None:
    """Raise :class:`InvalidRequest` (or :class:`AudioTooLong`) with a readable reason."""
    spec = model.spec
    audio = request.audio
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        raise InvalidRequest("audio must be a 1-D numpy array of mono samples")
    if audio.shape[0] > spec.window_samples:
        raise AudioTooLong(
            f"audio is {audio.shape[0] / spec.sample_rate:.2f} s but model {spec.name!r} takes at most "
            f"{spec.window_seconds:g} s per pass; split it first (dgasr-server's segmenter and "
            f"dgasr-transcribe do this)"
        )
    if not np.isfinite(audio).all():
        raise InvalidRequest("audio contains NaN or infinite samples")
    if not 1 <= request.steps <= spec.max_steps:
        raise InvalidRequest(f"steps must be between 1 and {spec.max_steps}, got {request.steps}")
    if request.language is not None and request.language not in spec.languages:
        raise InvalidRequest(f"language {request.language!r} not supported; expected one of {spec.languages}")
    canvas = request.start_canvas
    if canvas is not None:
        vocab = model.backbone.config.text_config.vocab_size
        if len(canvas) != spec.canvas_length or min(canvas) < 0 or max(canvas) >= vocab:
            raise InvalidRequest(f"start_canvas must be {spec.canvas_length} token ids in [0, {vocab})")


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def encode_prompts(model: AsrModel, prompt_ids: torch.Tensor, audio_embeds: torch.Tensor) -> DynamicCache:
    """Run DiffusionGemma's causal encoder over the prompts, audio scattered in; returns its KV cache."""
    bb = model.backbone
    batch, length = prompt_ids.shape
    cache = DynamicCache(config=bb.config.get_text_config(decoder=True))
    attention_mask = torch.ones((batch, length), dtype=torch.bool, device=prompt_ids.device)
    position_ids = torch.arange(length, dtype=torch.int32, device=prompt_ids.device).unsqueeze(0)
    mask_mapping = bb.model.encoder.create_masks_for_generate(
        config=bb.config,
        inputs_embeds=torch.empty((batch, length, 0), dtype=bb.dtype, device=prompt_ids.device),
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=position_ids,
        mm_token_type_ids=None,
    )
    features = BaseModelOutputWithPooling(pooler_output=audio_embeds.reshape(-1, audio_embeds.shape[-1]))
    out = bb.model.encoder(
        input_ids=prompt_ids,
        attention_mask=mask_mapping,
        past_key_values=cache,
        position_ids=position_ids,
        mm_encoder_outputs={"image": features},
    )
    return out.past_key_values


def ctc_canvases(model: AsrModel, audio_embeds: torch.Tensor, languages: Sequence[str | None] | None = None,
                 phone_logits: torch.Tensor | None = None, detected: list[str | None] | None = None) -> torch.Tensor:
    """CTC reading of the audio embeddings, laid out as canvases (batch, canvas_length).

    The embeddings go through the tied lm_head. With a lexicon for a row's language
    (``model.lexicon``, :mod:`server.engine.lexicon`) the row is decoded into lexicon
    words; a row without a language (automatic) is decoded with whichever lexicon fits
    its audio best, or, when every language the model knows has a lexicon and none fits or
    finds a word in it (a greedy reading in a jumble of scripts: what babble gives), starts
    empty; otherwise :func:`ctc_collapse` lays out the greedy argmax. A language whose
    lexicon is spelled in phonemes reads ``phone_logits`` (the projector's phoneme head,
    same rows) instead of the characters.

    ``detected``, when given, is filled with each row's language: its hint, or for an
    automatic row the language whose lexicon won (None where no lexicon read it).
    """
    bb = model.backbone
    logits = bb.lm_head(audio_embeds.to(bb.dtype))
    canvases = ctc_collapse(model, logits.argmax(-1))
    if detected is not None:
        detected[:] = list(languages) if languages is not None else [None] * len(canvases)
    if model.lexicon is not None and languages is not None:
        vocab = len(model.tokenizer)
        known = set(model.spec.languages) <= set(model.lexicon.languages)  # every language it knows has a lexicon
        special = [i for i in model.tokenizer.all_special_ids if i != bb.config.text_config.pad_token_id]
        for row, language in enumerate(languages):
            if language is not None and language not in model.lexicon.languages:
                continue
            # only the readings the search will use: a hinted language reads characters or phonemes
            phonemic = language is not None and model.lexicon.reads_phones(language)
            log_probs = phones = None
            if not phonemic:
                log_probs = torch.log_softmax(logits[row, :, :vocab].float(), dim=-1)
                log_probs[:, special] = -30.0
                log_probs = log_probs.detach().cpu().numpy()
            if phone_logits is not None and (language is None or phonemic):
                phones = torch.log_softmax(phone_logits[row].float(), dim=-1).detach().cpu().numpy()
            if language is None:
                found = model.lexicon.detect(log_probs, model.decode(canvases[row].tolist()), phone_log_probs=phones)
                ids = found[1] if found else None
                if not ids and known:  # no lexicon fits, or none finds a word in it: not speech it knows
                    canvases[row] = _layout(model, [], canvases.device)
                elif ids and detected is not None:
                    detected[row] = found[0]
            else:
                ids = model.lexicon.decode(log_probs, language, phones)
            if ids:
                canvases[row] = _layout(model, ids, canvases.device)
    return canvases


def _layout(model: AsrModel, ids: list[int], device) -> torch.Tensor:
    """Token ids laid out as one canvas: cut to fit, closed by end-of-sequence, padded."""
    length = model.backbone.config.canvas_length
    canvas = torch.full((length,), model.backbone.config.text_config.pad_token_id, dtype=torch.long, device=device)
    ids = ids[: length - 1]
    canvas[: len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
    canvas[len(ids)] = model.eos_token_id
    return canvas


def ctc_collapse(model: AsrModel, best: torch.Tensor) -> torch.Tensor:
    """Per-audio-token argmax ids (batch, audio_tokens) -> canvases (batch, canvas_length).

    Repeats merged, blanks dropped (blank is the pad id, as in training), then cut to fit,
    closed by end-of-sequence and padded: exactly the layout of a training target, so the
    denoiser sees the kind of canvas it was trained to correct. (The trainer calls this
    on the argmax of the CTC logits it already has.)
    """
    bb = model.backbone
    blank = bb.config.text_config.pad_token_id
    length = bb.config.canvas_length
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    canvases = torch.full((best.shape[0], length), blank, dtype=torch.long, device=best.device)
    for row, (ids, mask) in enumerate(zip(best, keep)):
        tokens = ids[mask][: length - 1]
        canvases[row, : tokens.shape[0]] = tokens
        canvases[row, tokens.shape[0]] = model.eos_token_id
    return canvases


def denoise(
    model: AsrModel,
    cache: DynamicCache,
    prompt_length: int,
    steps: Sequence[int],
    generators: Sequence[torch.Generator],
    start_canvases: Sequence[torch.Tensor | None],
) -> tuple[list[list[int]], list[int]]:
    """Denoise one canvas per row; returns (argmax canvases, steps run) in row order."""
    bb = model.backbone
    settings = model.spec.sampler
    device = model.device
    length = bb.config.canvas_length
    vocab = bb.config.text_config.vocab_size
    sampler = _SeededSampler(EntropyBoundSamplerConfig(settings.entropy_bound), length, vocab, max(steps))
    stoppers = [
        StableAndConfidentStoppingCriteria(settings.stability_threshold, settings.confidence_threshold)
        for _ in steps
    ]
    rows = [
        start.to(device).view(1, length) if start is not None else
        torch.randint(0, vocab, (1, length), device=device, generator=g)
        for start, g in zip(start_canvases, generators)
    ]
    canvas = torch.cat(rows)
    keep_below = settings.keep_start_below
    kept = [row[0] if start is not None and keep_below > 0 else None for row, start in zip(rows, start_canvases)]
    active = list(range(len(steps)))
    finals: list[list[int]] = [[] for _ in steps]
    steps_run = [0] * len(steps)
    positions = torch.arange(prompt_length, prompt_length + length, dtype=torch.int32, device=device).unsqueeze(0)
    self_conditioning = None
    mask_mapping = None
    embed_dtype = bb.model.decoder.embed_tokens.weight.dtype
    while active:
        if mask_mapping is None:  # (re)built whenever the batch shape changes
            decoder_mask = torch.ones((len(active), prompt_length + length), dtype=torch.bool, device=device)
            mask_mapping = bb.model.decoder.create_diffusion_decoder_attention_mask(
                config=bb.config,
                inputs_embeds=canvas.unsqueeze(-1),
                past_key_values=cache,
                decoder_attention_mask=decoder_mask,
            )
        logits = bb(
            decoder_input_ids=canvas,
            self_conditioning_logits=self_conditioning,
            decoder_attention_mask=mask_mapping,
            past_key_values=cache,
            decoder_position_ids=positions,
        ).logits
        processed = _schedule(logits, [steps[r] - steps_run[r] for r in active], [steps[r] for r in active], settings)
        # how probable each position's choice is before temperature: only where a start may be kept
        sure = torch.softmax(logits.float(), dim=-1).amax(-1) if any(kept[r] is not None for r in active) else None
        del logits  # (batch, canvas, vocab) floats: on the real model several GB per copy
        probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
        sampled = torch.cat(
            [torch.multinomial(probs[j], 1, generator=generators[r]).view(1, length) for j, r in enumerate(active)]
        )
        argmax = torch.argmax(processed, dim=-1)
        accepted = sampler.accept_canvas(canvas, sampled, processed, 0).clone()
        sampler.generators = [generators[r] for r in active]
        canvas = sampler.renoise_canvas(accepted, 0).clone()
        self_conditioning = processed.to(embed_dtype)
        keep: list[int] = []
        for j, r in enumerate(active):
            steps_run[r] += 1
            stop = bool(stoppers[r](argmax[j : j + 1], processed[j : j + 1])[0])
            if stop or steps_run[r] >= steps[r]:
                chosen = argmax[j]
                if kept[r] is not None:
                    chosen = torch.where(sure[j] < keep_below, kept[r], chosen)
                finals[r] = chosen.tolist()
            else:
                keep.append(j)
        if len(keep) < len(active):
            active = [active[j] for j in keep]
            if not active:
                break
            index = torch.tensor(keep, device=device)
            canvas, self_conditioning = canvas[index], self_conditioning[index]
            cache.batch_select_indices(index)
            mask_mapping = None
    return finals, steps_run


@torch.inference_mode()
def run_batch(model: AsrModel, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
    """Transcribe ``requests`` together; results come back in request order.

    Requests are grouped by the audio length the encoder sees (one group per bucket, or
    one for the whole batch when the model pads to its window) and, within that, by
    prompt length; each group runs its own encoder, prompt and denoising passes.
    """
    for request in requests:
        validate_request(model, request)
    device = model.device
    spec = model.spec
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
        by_length.setdefault(spec.encoder_samples(r.audio.shape[0]), []).append(i)
    canvases: list[list[int]] = [[] for _ in requests]
    steps_run = [0] * len(requests)
    words: list[tuple] = [() for _ in requests]
    heard: list[str | None] = [r.language for r in requests]  # the hint, or the language the lexicon search chose
    features_ms = audio_ms = prompt_ms = denoise_ms = decode_ms = 0.0
    for samples, batch in by_length.items():
        t0 = _sync(device)
        features = log_mel(model.feature_extractor, [requests[i].audio for i in batch], samples, device)
        features = features.to(device=device, dtype=model.whisper.dtype)
        t1 = _sync(device)
        embeds, phone_logits = hear(model, features)
        t2 = _sync(device)
        features_ms += (t1 - t0) * 1000
        audio_ms += (t2 - t1) * 1000
        slots = embeds.shape[1]
        groups: dict[int, list[int]] = {}
        for k, i in enumerate(batch):
            groups.setdefault(len(model.prompt_ids(requests[i].language, slots)), []).append(k)
        for prompt_length, rows in groups.items():
            members = [batch[k] for k in rows]
            ta = _sync(device)
            ids = torch.tensor([model.prompt_ids(requests[i].language, slots) for i in members], device=device)
            cache = encode_prompts(model, ids, embeds[rows])
            tb = _sync(device)
            generators = [torch.Generator(device=device).manual_seed(requests[i].seed) for i in members]
            starts: list[torch.Tensor | None] = [
                torch.tensor(requests[i].start_canvas, dtype=torch.long) if requests[i].start_canvas else None
                for i in members
            ]
            cold = [k for k, start in enumerate(starts) if start is None]
            if cold and spec.canvas_start == "ctc":
                languages = [requests[members[k]].language for k in cold]
                picked = [rows[k] for k in cold]
                phones = phone_logits[picked] if phone_logits is not None else None
                detected: list[str | None] = []
                cold_starts = ctc_canvases(model, embeds[picked], languages, phones, detected)
                for k, canvas, language in zip(cold, cold_starts, detected):
                    starts[k] = canvas
                    heard[members[k]] = language
            tc = _sync(device)
            out, ran = denoise(model, cache, prompt_length, [requests[i].steps for i in members], generators, starts)
            td = _sync(device)
            for k, i, row, n in zip(rows, members, out, ran):
                steps_run[i] = n
                text = model.decode(row) if spec.noise_gate.max_chars > 0 else ""
                short = is_short(spec.noise_gate, text)
                if requests[i].word_timings or short:
                    seconds = requests[i].audio.shape[0] / SAMPLE_RATE
                    timed = word_timings(model, embeds[k], row, samples / SAMPLE_RATE / slots, seconds,
                                         None if phone_logits is None else phone_logits[k], requests[i].language)
                    if short and below_gate(spec.noise_gate, text, timed, seconds):
                        row, timed = [model.eos_token_id] * len(row), ()  # noise, not speech: empty
                        heard[i] = requests[i].language
                    words[i] = timed if requests[i].word_timings else ()
                canvases[i] = row
            prompt_ms += (tb - ta) * 1000
            denoise_ms += (td - tc) * 1000
            decode_ms += (tc - tb + _sync(device) - td) * 1000
    timings = PhaseTimings(
        features_ms=features_ms,
        audio_encoder_ms=audio_ms,
        prompt_encode_ms=prompt_ms,
        denoise_ms=denoise_ms,
        batch_size=len(requests),
        decode_ms=decode_ms,
    )
    return [
        TranscribeResult(text=model.decode(c), canvas=tuple(c), steps=n, timings=timings, words=w, language=language)
        for c, n, w, language in zip(canvases, steps_run, words, heard)
    ]
