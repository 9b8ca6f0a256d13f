"""`tiny-random`: the real model's classes at tiny sizes, built in-process in about a second.

Same WhisperEncoder, AudioProjector, DiffusionGemmaForBlockDiffusion and a real
(character-level) fast tokenizer as the production model, with seeded random weights.
The text it produces is noise, but every code path (prompt scatter, KV cache, denoising,
sampler, batching, saving and loading) is the production one. Tests and server
development use it; it declares an 8 s audio window so CPU runs stay cheap.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .model import AsrModel
from .projector import AudioProjector
from .spec import LANGUAGES, ModelSpec, ProjectorConfig

__all__ = ["SPECIAL_TOKENS", "build_char_tokenizer", "build_tiny_random", "tiny_spec"]

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<audio>", "<boa>", "<eoa>", "<auto>"] + [
    f"<{code}>" for code in LANGUAGES
]


def build_char_tokenizer(chars: str | list[str], vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: special tokens first (pad=0, eos=1, bos=2), then ``chars``.

    Why characters: the tiny and demo models cover six scripts with a few hundred ids,
    and a character vocabulary needs no trained merges.
    """
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + list(chars):
        vocab.setdefault(token, len(vocab))
    if vocab_size is not None and len(vocab) > vocab_size:
        raise ValueError(f"{len(vocab)} tokens do not fit a vocabulary of {vocab_size}")
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", ignore_merges=True))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )


def _tiny_chars(count: int) -> list[str]:
    base = [chr(c) for c in range(32, 127)] + list("äöüßéèêàâçñíóúÄÖÜÉ")
    base += [chr(c) for c in range(0x0905, 0x0940)]  # Devanagari letters and signs
    extra = [chr(c) for c in range(0x4E00, 0x4E00 + count)]  # CJK ideographs fill the rest
    return (base + extra)[: count]


def tiny_spec(name: str = "tiny-random") -> ModelSpec:
    hints = {"auto": "<auto>"} | {code: f"<{code}>" for code in LANGUAGES}
    return ModelSpec(
        name=name,
        parts={},
        window_seconds=8.0,
        audio_tokens=50,
        canvas_length=32,
        prompt_template="<bos>{audio}{language}",
        language_hints=hints,
        draft_steps=3,
        final_steps=16,
        projector=ProjectorConfig(in_dim=64, channels=64, num_layers=3, kernel_size=3, stride=2, out_dim=64),
    )


def build_tiny_random(seed: int = 0, vocab_size: int = 512) -> AsrModel:
    """Build tiny-random with weights drawn from ``seed`` (global RNG state is left untouched)."""
    spec = tiny_spec()
    tokenizer = build_char_tokenizer(_tiny_chars(vocab_size - len(SPECIAL_TOKENS)), vocab_size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in ("<audio>", "<boa>", "<eoa>")}
    frames = int(spec.window_seconds * 100) // 2  # 100 mel frames/s, whisper conv2 stride 2
    whisper_config = WhisperConfig(
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        max_source_positions=frames,
        vocab_size=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
    )
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision_config = dict(  # unused by ASR, but DiffusionGemma always builds a vision tower
        model_type="gemma4_vision",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        position_embedding_size=64,
    )
    config = DiffusionGemmaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<audio>"],
        boi_token_id=ids["<boa>"],
        eoi_token_id=ids["<eoa>"],
        canvas_length=spec.canvas_length,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        whisper = WhisperEncoder(whisper_config)
        projector = AudioProjector(spec.projector)
        backbone = DiffusionGemmaForBlockDiffusion(config)
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=int(spec.window_seconds))
    model = AsrModel(spec, features, whisper, projector, backbone, tokenizer, source="tiny-random")
    return model.to(torch.device("cpu"), torch.float32)
