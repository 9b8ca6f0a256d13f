#!/usr/bin/env python
"""Measure the real model's costs on a GPU without its weights: real sizes, random bf16 weights.

How this works
--------------
The real ``diffusion-gemma-asr-small`` needs gated weights and a 52 GB download; its
*costs* do not. This script builds the same classes at the real sizes (whisper-small
encoder, the real projector, a ``DiffusionGemmaForBlockDiffusion`` with the real text
config: hidden 2816, 30 layers, 128 experts top-8, vocabulary 262144) with random weights
created directly on the device in bf16 (no host copy), wraps them in the production
``AsrModel`` and ``Engine``, warms up, measures the cost table (features + encoder,
prompt pass, one denoising step; batch sizes 1-64, full 30 s windows, the real 256-token
canvas) with ``bench_engine.write_costs``, writes the cost file and runs the capacity
simulator on it. The text is noise (random weights); the time is the real model's.

The prompt is shorter than the real one by the chat template's few tokens (the real
tokenizer is not available offline; the 188 audio slots and the canvas are real).

    python scripts/gpu_costs.py --save-speech runs/speech.npy                 # here: espeak speech
    python scripts/gpu_costs.py --speech runs/speech.npy --out costs/h200-real-measured.json  # GPU (~4-6 min)
    python scripts/gpu_costs.py --shrink --device cpu --out /tmp/dry.json    # the CPU dry run (tests)

The speech (the simulator's clip, also looped into the cost requests) is made with
espeak-ng, which a bare GPU machine does not have: ``--save-speech`` writes it where
espeak is, and ``--speech`` reads it there (carry the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    WhisperConfig,
    WhisperFeatureExtractor,  # noqa: E402
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

from server.engine import Engine  # noqa: E402
from server.engine.loader import REAL_SPEC  # noqa: E402
from server.engine.model import AsrModel  # noqa: E402
from server.engine.projector import AudioProjector  # noqa: E402
from server.engine.spec import LANGUAGES  # noqa: E402
from server.engine.tiny import SPECIAL_TOKENS, build_char_tokenizer  # noqa: E402

REAL_TEXT = dict(hidden_size=2816, intermediate_size=2112, num_hidden_layers=30, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=256, global_head_dim=512, num_global_key_value_heads=2,
                 num_experts=128, top_k_experts=8, moe_intermediate_size=704, sliding_window=1024,
                 vocab_size=262144, final_logit_softcapping=30.0)
SHRUNK_TEXT = dict(REAL_TEXT, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, global_head_dim=64, num_global_key_value_heads=1,
                   num_experts=8, top_k_experts=2, moe_intermediate_size=64, sliding_window=256, vocab_size=4096)
WHISPER_SMALL = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072)
WHISPER_SHRUNK = dict(d_model=768, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=512)


def build(device: torch.device, shrink: bool) -> AsrModel:
    text = SHRUNK_TEXT if shrink else REAL_TEXT
    chars = [chr(c) for c in range(0x20, 0x7F)]
    tokenizer = build_char_tokenizer(chars, len(SPECIAL_TOKENS) + len(chars))
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in ("<audio>", "<boa>", "<eoa>")}
    hints = {"auto": "<auto>"} | {code: f"<{code}>" for code in LANGUAGES}
    spec = dataclasses.replace(REAL_SPEC, name="real-size-random", parts={}, prompt_template="<bos>{audio}{language}",
                               language_hints=hints)
    layers = text["num_hidden_layers"]
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    if "full_attention" not in layer_types:
        layer_types[-1] = "full_attention"
    config = DiffusionGemmaConfig(
        text_config=dict(text, layer_types=layer_types, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2),
        vision_config=dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16, position_embedding_size=64),
        image_token_id=ids["<audio>"], boi_token_id=ids["<boa>"], eoi_token_id=ids["<eoa>"],
        canvas_length=spec.canvas_length)
    whisper_config = WhisperConfig(num_mel_bins=80, max_source_positions=1500, decoder_layers=1,
                                   decoder_attention_heads=4, decoder_ffn_dim=128, vocab_size=128, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
                                   **(WHISPER_SHRUNK if shrink else WHISPER_SMALL))
    projector_config = dataclasses.replace(spec.projector, out_dim=text["hidden_size"])
    spec = dataclasses.replace(spec, projector=projector_config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # weights are made where they run: no 52 GB host copy
            whisper = WhisperEncoder(whisper_config)
            projector = AudioProjector(projector_config)
            backbone = DiffusionGemmaForBlockDiffusion(config)
    finally:
        torch.set_default_dtype(previous)
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=int(spec.window_seconds))
    model = AsrModel(spec, features, whisper, projector, backbone, tokenizer, source="real-size-random")
    return model.to(device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shrink", action="store_true", help="a few layers and experts: the CPU dry run")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--out", type=Path, help="the cost file to write (required unless --save-speech)")
    parser.add_argument("--streams", default="4,8,12,16,24,32,48,64", help="for the capacity run on the result")
    parser.add_argument("--speech", type=Path, help="the speech clip (.npy) from --save-speech (default: espeak here)")
    parser.add_argument("--save-speech", type=Path, metavar="FILE", help="only write the speech clip, then exit")
    args = parser.parse_args()
    import capacity
    from bench_engine import write_costs

    if args.save_speech:
        np.save(args.save_speech, capacity._speech())
        print(f"wrote {args.save_speech}")
        return
    if args.out is None:
        parser.error("--out is required")
    audio = np.load(args.speech) if args.speech else capacity._speech()
    if audio.dtype != np.float32 or audio.ndim != 1:
        raise SystemExit(f"{args.speech}: expected 1-d float32 samples at 16 kHz, got {audio.dtype} {audio.shape}")

    device = torch.device(args.device)
    t0 = time.perf_counter()
    engine = Engine(lambda: build(device, args.shrink)).start()
    model = engine.wait_ready(1800)
    params = sum(p.numel() for part in (model.whisper, model.projector, model.backbone) for p in part.parameters()) / 1e9
    print(f"built {params:.2f} B parameters on {device} in {time.perf_counter() - t0:.1f} s "
          f"(load + warm-up {engine.stats.load_seconds + engine.stats.warmup_seconds:.1f} s)", flush=True)
    options = SimpleNamespace(write_costs=str(args.out), batches=args.batches, repeats=12, model="real-size-random" + (" (shrunk)" if args.shrink
                              else ""), device=args.device, label=None, language=None)
    options.label = (f"diffusion-gemma-asr-small sizes, random weights, on {torch.cuda.get_device_name(device)}"
                     if device.type == "cuda" else f"real-size-random{' (shrunk)' if args.shrink else ''} on {device}")
    samples = int(model.spec.window_seconds * 16000)
    clips = [np.resize(np.roll(audio, 16000 * k), samples) for k in range(8)]  # looped to the window
    write_costs(engine, model, options, model.spec.window_seconds, clips)
    print(f"measured in {time.perf_counter() - t0:.0f} s", flush=True)
    from costs import Costs

    costs = Costs.load(args.out)
    for n in (int(x) for x in args.streams.split(",")):
        row = capacity.simulate(costs, n, 60.0, 16, audio)
        print(f"{n:4d} streams: final p95 {row['final_p95'] * 1000:6.0f} ms, util {row['utilisation']:4.0%}, "
              f"kept up {'yes' if capacity.kept_up(row, 1500) else 'no'}", flush=True)


if __name__ == "__main__":
    main()
