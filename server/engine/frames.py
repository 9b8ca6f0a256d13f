"""Audio -> whisper log-mel features -> whisper encoder frames, at the length a model declares.

How this works
--------------
``ModelSpec.encoder_samples`` says how much audio the encoder sees for a request: the
full window (whisper's own padding, which the real model was trained on), or the audio's
own length rounded up to a bucket (the demo model). :func:`log_mel` pads to exactly that
length, and :func:`encode` runs transformers' ``WhisperEncoder`` on however many frames
that gives. ``WhisperEncoder.forward`` insists on its full ``max_source_positions``, so
:func:`encode` repeats its few lines (convs, positions cut to the length, layers, norm)
for shorter inputs and calls the library's own forward for a full window.

The engine's batches and the demo trainer's feature cache both go through here, so a
model is trained on exactly the frames it is served.

:func:`hear` runs the encoder and the projector under the model's ``audio_dtype``
(autocast): on a CPU that computes bf16 natively (AVX512-BF16, AMX) the loader sets bf16
for the demo, which halves the audio path's time there (the demo's training frames were
computed that way too); elsewhere they run in their weights' own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = ["log_mel", "encode", "hear", "project", "embed_audio", "read_audio", "native_bf16"]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX).

    There bf16 autocast halves the encoder's time; on a CPU without it (AVX2 only, e.g.
    an AMD EPYC seen here) oneDNN emulates bf16 and the same encode took 7x longer than fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private probe: when it is gone, assume not
        return False


def log_mel(extractor: WhisperFeatureExtractor, audios: Sequence[np.ndarray], samples: int,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Whisper log-mel features (batch, mel bins, samples / hop) of audios padded to ``samples``."""
    device = torch.device(device)
    batch = extractor(
        [a.astype(np.float32, copy=False) for a in audios],
        sampling_rate=extractor.sampling_rate,
        return_tensors="pt",
        padding="max_length",
        max_length=samples,
        truncation=True,
        device="cuda" if device.type == "cuda" else "cpu",
    )
    return batch.input_features


def encode(whisper: WhisperEncoder, features: torch.Tensor) -> torch.Tensor:
    """Encoder frames (batch, frames, d_model) for log-mel ``features`` of any length up to the window."""
    frames = features.shape[-1] // (whisper.conv1.stride[0] * whisper.conv2.stride[0])
    if frames == whisper.config.max_source_positions:
        return whisper(features).last_hidden_state
    if frames > whisper.config.max_source_positions:
        raise ValueError(f"{frames} encoder frames exceed the model's {whisper.config.max_source_positions} positions")
    x = nn.functional.gelu(whisper.conv1(features))
    x = nn.functional.gelu(whisper.conv2(x)).permute(0, 2, 1)
    x = x + whisper.embed_positions.weight[:frames]
    for layer in whisper.layers:
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    return whisper.layer_norm(x)


def embed_audio(model, audios: Sequence[np.ndarray], samples: int | None = None) -> torch.Tensor:
    """Projector outputs (batch, audio slots, hidden) of ``model`` (an AsrModel) for same-bucket audios.

    ``samples`` defaults to what the spec says the encoder sees for the longest audio.
    """
    return read_audio(model, audios, samples)[0]


def read_audio(model, audios: Sequence[np.ndarray],
               samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(projector outputs, phoneme logits or None): :func:`embed_audio` with the phoneme head's reading."""
    samples = samples or model.spec.encoder_samples(max(a.shape[0] for a in audios))
    features = log_mel(model.feature_extractor, audios, samples, model.device).to(model.device, model.whisper.dtype)
    return hear(model, features)


def hear(model, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(projector outputs in the backbone's dtype, phoneme logits in float32 or None) of
    ``model`` (an AsrModel) for log-mel ``features``, under its ``audio_dtype``."""
    with _audio_autocast(model):
        return project(model, encode(model.whisper, features))


def project(model, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`hear` from whisper encoder ``frames`` on (the demo's trainers start from stored frames)."""
    with _audio_autocast(model):
        embeds, phones = model.projector.read(frames)
    return embeds.to(model.backbone.dtype), None if phones is None else phones.float()


def _audio_autocast(model) -> torch.autocast:
    return torch.autocast(model.device.type, dtype=model.audio_dtype or torch.float32,
                          enabled=model.audio_dtype is not None)
