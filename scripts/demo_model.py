"""The demo model's definition: whisper-base's pretrained encoder + the production classes at small sizes.

How this works
--------------
The demo is built the way the real model is: a **frozen pretrained whisper encoder**
(OpenAI whisper-base, imported from the package registry by ``scripts/import_whisper.py``,
its position table cut to the 10 s window), a trained :class:`AudioProjector` (two convs
and three context blocks at whisper's own 50 frames per second), and a small
``DiffusionGemmaForBlockDiffusion`` over a character vocabulary. :func:`build_demo` wraps them in the same :class:`AsrModel` the loader returns
for the real model, so it is saved and served by the production code.

The spec declares ``encoder_bucket_seconds`` (the encoder runs on the audio's own length,
rounded up to 1 s, as the training features were made) and ``canvas_start="ctc"`` (the
denoiser starts from the greedy CTC reading of the audio embeddings).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_data  # noqa: E402
from transformers import (  # noqa: E402
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    PreTrainedTokenizerFast,
)

from server.engine.loader import load_whisper_encoder  # noqa: E402
from server.engine.model import AsrModel  # noqa: E402
from server.engine.projector import AudioProjector  # noqa: E402
from server.engine.spec import (  # noqa: E402
    LANGUAGES,
    WHISPER_FRAMES_PER_SECOND,
    ModelSpec,
    NoiseGate,
    ProjectorConfig,
    SamplerSettings,
)
from server.engine.tiny import build_char_tokenizer  # noqa: E402

__all__ = ["WINDOW_SECONDS", "BUCKET_SECONDS", "CANVAS", "SAMPLER", "NOISE_GATE", "DIMS", "demo_spec", "build_tokenizer",
           "build_demo", "export"]

WINDOW_SECONDS = 10.0
BUCKET_SECONDS = 1.0
CANVAS = 160  # characters: 10 s of fast speech is ~150
# The denoiser is small and its per-character distributions are flat: sampled at
# transformers' default temperatures (0.8 -> 0.4) a second step starts from a canvas of
# misspellings and returns garbage (2 steps: 105-124% WER). Near-greedy temperatures keep
# every step count at least as good as one step, so a higher --final-steps is never a cliff.
SAMPLER = SamplerSettings(t_min=0.05, t_max=0.1, keep_start_below=0.5)
# What the demo makes of loud noise that VAD let through is a letter or a word or two ("e",
# "a", "7", "des la"), weakly aligned or from seconds of sound; a spoken one-word answer is
# about a second long and its confidence is often low too (the demo heard few of them).
# scripts/calibrate_noise_gate.py (noise seeds 1-39, one-word answers in held-out voices),
# 2026-12-07, confidences from the phoneme alignment: at most 6 wide, confidence 0.3, 1.3
# wide per second passes 0 of 9 noise readings and loses 14 of 132 short speech readings
# (6 / 0.4 / 1.3: 0 and 25; docs/demo-model.md has the history).
NOISE_GATE = NoiseGate(max_chars=6, min_confidence=0.3, min_chars_per_second=1.3)
DIMS = {"whisper": 512, "proj": 512, "kernel": 5, "context": 3, "hidden": 256, "layers": 2, "heads": 4}


def demo_spec(dims: dict = DIMS) -> ModelSpec:
    hints = {"auto": "<auto>"} | {code: f"<{code}>" for code in LANGUAGES}
    projector = ProjectorConfig(in_dim=dims["whisper"], channels=dims["proj"], num_layers=2,
                                kernel_size=dims["kernel"], stride=1, out_dim=dims["hidden"],
                                context_blocks=dims["context"], context_kernel=15)
    return ModelSpec(
        name="demo",
        parts={},
        window_seconds=WINDOW_SECONDS,
        audio_tokens=projector.output_frames(int(WINDOW_SECONDS * WHISPER_FRAMES_PER_SECOND)),
        canvas_length=CANVAS,
        prompt_template="<bos>{audio}{language}",
        language_hints=hints,
        draft_steps=1,
        final_steps=2,
        projector=projector,
        canvas_start="ctc",
        encoder_bucket_seconds=BUCKET_SECONDS,
        cpu_audio_bf16=True,  # its training frames are bf16 where the CPU has it (demo_shards)
        sampler=SAMPLER,
        noise_gate=NOISE_GATE,
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of the training text (every script's letters, digits, space).

    Why characters: CTC over characters shares every letter across words, so it learns
    from dense labels and spells words it never saw; CTC over whole-word subwords (a
    3,072-id BPE) learned slowly on 2 cores and left most held-out words misspelled.
    """
    chars = {c for lang in demo_data.LANGS for w in demo_data.word_list(lang) for c in w}
    chars |= {c for lang in demo_data.LANGS for t in demo_data.TEMPLATES[lang] for c in t.replace("{n}", "").replace("{w}", "")}
    chars |= set("0123456789' ")
    return build_char_tokenizer(sorted(chars))


def build_demo(whisper_dir: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, dims: dict = DIMS) -> AsrModel:
    """The demo model: the pretrained encoder from ``whisper_dir`` and fresh trained parts from ``seed``."""
    spec = demo_spec(dims)
    features, whisper = load_whisper_encoder(Path(whisper_dir))
    whisper = whisper.float().requires_grad_(False)
    vocab_size = 16 * math.ceil(len(tokenizer) / 16)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in ("<audio>", "<boa>", "<eoa>")}
    h, layers = dims["hidden"], dims["layers"]
    text_config = dict(
        vocab_size=vocab_size, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers,
        num_attention_heads=dims["heads"], num_key_value_heads=2, head_dim=h // dims["heads"],
        global_head_dim=h // dims["heads"], num_global_key_value_heads=2, num_experts=2, top_k_experts=1,
        moe_intermediate_size=h, sliding_window=512,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    vision_config = dict(  # unused by ASR, but DiffusionGemma always builds a vision tower
        model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=16,
    )
    config = DiffusionGemmaConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<audio>"],
        boi_token_id=ids["<boa>"], eoi_token_id=ids["<eoa>"], canvas_length=spec.canvas_length,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = AudioProjector(spec.projector)
        backbone = DiffusionGemmaForBlockDiffusion(config)
        # The lm_head is tied to the embeddings and also reads the projector outputs for
        # CTC; at the default 0.02 init those logits start far too flat to learn from.
        backbone.get_input_embeddings().weight.data.normal_(0.0, h**-0.5)
    return AsrModel(spec, features, whisper, projector, backbone, tokenizer, source="demo")


def export(source: str, target: Path, draft_steps: int, final_steps: int, whisper_dir: Path | None = None) -> None:
    """Re-save a trained model directory in fp16 with the measured default step counts.

    ``whisper_dir`` (the import) gives the encoder's licence notice, which ships with it.
    """
    import dataclasses
    import shutil

    from server.engine.loader import load_model

    model = load_model(source, "cpu")
    model.spec = dataclasses.replace(model.spec, draft_steps=draft_steps, final_steps=final_steps, sampler=SAMPLER)
    model.to(torch.device("cpu"), torch.float16).save(target)
    if whisper_dir and (Path(whisper_dir) / "LICENSE.whisper").exists():
        shutil.copy(Path(whisper_dir) / "LICENSE.whisper", target / "whisper" / "LICENSE.whisper")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"exported {source} -> {target} (fp16, {size / 1e6:.1f} MB, draft {draft_steps}, final {final_steps} steps)")
