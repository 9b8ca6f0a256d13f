"""The demo model's definition: the production classes at small sizes, and its tokenizer.

How this works
--------------
:func:`build_demo` builds a WhisperEncoder, the AudioProjector and a
DiffusionGemmaForBlockDiffusion at the sizes in ``DIMS``, with a BPE tokenizer trained
on the synthetic transcripts (:func:`build_tokenizer`), and wraps them in the same
:class:`~server.engine.model.AsrModel` the loader returns for the real model, so the
trained model is saved and loaded by the production code. :func:`export` re-saves a
trained model in fp16 with its default step counts. ``scripts/train_demo.py`` trains it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_data  # noqa: E402
from demo_shards import WINDOW_SECONDS  # noqa: E402
from transformers import (  # noqa: E402
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

from server.engine.model import AsrModel  # noqa: E402
from server.engine.projector import AudioProjector  # noqa: E402
from server.engine.spec import LANGUAGES, ModelSpec, ProjectorConfig  # noqa: E402
from server.engine.tiny import SPECIAL_TOKENS  # noqa: E402

__all__ = ["CANVAS", "VOCAB", "DIMS", "demo_spec", "build_tokenizer", "build_demo", "export"]

CANVAS = 24
VOCAB = 2560
DIMS = {"whisper": 192, "whisper_layers": 3, "proj": 256, "hidden": 256, "layers": 4, "heads": 4}


def demo_spec(dims: dict) -> ModelSpec:
    hints = {"auto": "<auto>"} | {code: f"<{code}>" for code in LANGUAGES}
    frames = int(WINDOW_SECONDS * 100) // 2
    projector = ProjectorConfig(
        in_dim=dims["whisper"], channels=dims["proj"], num_layers=1, kernel_size=3, stride=1, out_dim=dims["hidden"]
    )
    return ModelSpec(
        name="demo",
        parts={},
        window_seconds=WINDOW_SECONDS,
        audio_tokens=projector.output_frames(frames),
        canvas_length=CANVAS,
        prompt_template="<bos>{audio}{language}",
        language_hints=hints,
        draft_steps=2,
        final_steps=8,
        projector=projector,
        canvas_start="ctc",
    )


def build_tokenizer(vocab_size: int = VOCAB, texts: int = 60_000) -> PreTrainedTokenizerFast:
    """A subword (BPE) tokenizer trained on the generator's own transcripts.

    Why subwords and not characters: most demo words become one or two tokens, so the
    canvas is 24 tokens instead of ~64 characters (half the decoder cost) and the
    denoiser places words rather than counting letters. Every character of the six
    scripts stays in the alphabet, so any transcript still encodes.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=list(demo_data.charset()), show_progress=False)
    corpus = (demo_data.sample_text(7_000_000 + i, demo_data.LANGS[i % 6]) for i in range(texts))
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:])


def build_demo(seed: int = 0, dims: dict = DIMS, tokenizer: PreTrainedTokenizerFast | None = None) -> AsrModel:
    """The demo model with fresh weights drawn from ``seed``."""
    spec = demo_spec(dims)
    tokenizer = tokenizer or build_tokenizer()
    vocab_size = 16 * math.ceil(len(tokenizer) / 16)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in ("<audio>", "<boa>", "<eoa>")}
    d = dims["whisper"]
    whisper_config = WhisperConfig(
        num_mel_bins=80, d_model=d, encoder_layers=dims["whisper_layers"], encoder_attention_heads=4,
        encoder_ffn_dim=4 * d, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=4 * d,
        max_source_positions=int(WINDOW_SECONDS * 100) // 2, vocab_size=128, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=3,
        # Whisper's 0.02 init leaves the conv front end's output ~30x smaller than the
        # sinusoidal positions it is added to, and a from-scratch encoder then sees only
        # position for thousands of steps; 0.08 puts both near unit scale.
        init_std=0.08,
    )
    h = dims["hidden"]
    layers = dims["layers"]
    text_config = dict(
        vocab_size=vocab_size, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers,
        num_attention_heads=dims["heads"], num_key_value_heads=2, head_dim=h // dims["heads"],
        global_head_dim=h // dims["heads"], num_global_key_value_heads=2, num_experts=2, top_k_experts=1,
        moe_intermediate_size=h // 2, sliding_window=512,
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
        whisper = WhisperEncoder(whisper_config)
        projector = AudioProjector(spec.projector)
        backbone = DiffusionGemmaForBlockDiffusion(config)
        # The lm_head is tied to the embeddings and also reads the projector outputs for
        # CTC; at the default 0.02 init those logits start ~30x too flat to learn from.
        backbone.get_input_embeddings().weight.data.normal_(0.0, h**-0.5)
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=int(WINDOW_SECONDS))
    return AsrModel(spec, features, whisper, projector, backbone, tokenizer, source="demo")


def export(source: str, target: Path, draft_steps: int, final_steps: int) -> None:
    """Re-save a trained model directory in fp16 with the measured default step counts."""
    import dataclasses

    from server.engine.loader import load_model

    model = load_model(source, "cpu")
    model.spec = dataclasses.replace(model.spec, draft_steps=draft_steps, final_steps=final_steps)
    model.to(torch.device("cpu"), torch.float16).save(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"exported {source} -> {target} (fp16, {size / 1e6:.1f} MB, draft {draft_steps}, final {final_steps} steps)")
