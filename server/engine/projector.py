"""The trained audio projector: whisper encoder frames -> backbone-width audio embeddings.

Strided 1-D convolutions subsample time (8x for three stride-2 layers: 1500 whisper
frames -> 188 embeddings per 30 s) and a final linear maps to the backbone width, so the
embeddings can be scattered into the prompt's audio placeholder slots. Optional residual
context blocks (``ProjectorConfig.context_blocks``; layer norm, pointwise conv, GELU,
depthwise conv, GELU, pointwise conv, added back) widen what each embedding sees; their
last conv starts at zero, so a block starts as the identity.

With ``ProjectorConfig.phones`` the projector also reads phonemes: a layer norm and a linear
over the same hidden state give CTC logits over a phoneme inventory (blank first), which a
pronouncing lexicon (:mod:`server.engine.lexicon`) decodes into words. :meth:`read` returns
both; ``forward`` only the embeddings.
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
        for stride in config.layer_strides():
            layers.append(
                nn.Conv1d(dim, config.channels, config.kernel_size, stride, padding=config.kernel_size // 2)
            )
            layers.append(nn.GELU())
            dim = config.channels
        self.convs = nn.Sequential(*layers)
        self.context = nn.ModuleList(_ContextBlock(dim, config.context_kernel) for _ in range(config.context_blocks))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, config.out_dim)
        if config.phones:
            self.phone_norm = nn.LayerNorm(dim)
            self.phone_out = nn.Linear(dim, config.phones)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (batch, time, in_dim) -> (batch, time / stride**layers, out_dim)."""
        return self.read(frames)[0]

    def read(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings, phoneme logits (batch, time, phones) or None without a phoneme head)."""
        x = self.convs(frames.transpose(1, 2)).transpose(1, 2)
        for block in self.context:
            x = block(x)
        phones = self.phone_out(self.phone_norm(x)) if self.config.phones else None
        return self.proj(self.norm(x)), phones


class _ContextBlock(nn.Module):
    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(2 * dim, 2 * dim, kernel, padding=kernel // 2, groups=2 * dim)
        self.reduce = nn.Conv1d(2 * dim, dim, 1)
        nn.init.zeros_(self.reduce.weight)
        nn.init.zeros_(self.reduce.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.expand(self.norm(x).transpose(1, 2)))
        y = self.reduce(nn.functional.gelu(self.depthwise(y)))
        return x + y.transpose(1, 2)
