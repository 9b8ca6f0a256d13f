"""The trained audio projector: whisper encoder frames -> backbone-width audio embeddings.

Strided 1-D convolutions subsample time (8x for three stride-2 layers: 1500 whisper
frames -> 188 embeddings per 30 s) and a final linear maps to the backbone width, so the
embeddings can be scattered into the prompt's audio placeholder slots.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import ProjectorConfig

__all__ = ["AudioProjector"]


class AudioProjector(nn.Module):
    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        dim = config.in_dim
        for _ in range(config.num_layers):
            layers.append(
                nn.Conv1d(dim, config.channels, config.kernel_size, config.stride, padding=config.kernel_size // 2)
            )
            layers.append(nn.GELU())
            dim = config.channels
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, config.out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (batch, time, in_dim) -> (batch, time / stride**layers, out_dim)."""
        x = self.convs(frames.transpose(1, 2)).transpose(1, 2)
        return self.proj(self.norm(x))
