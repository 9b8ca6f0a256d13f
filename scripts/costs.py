"""Cost files: what one batched engine call costs on a device, as a function of batch size.

Format (JSON)::

    {"label": "...", "kind": "measured" | "estimate", "device": "...", "model": "...",
     "window_seconds": 30.0, "canvas_length": 256, "draft_steps": 3, "final_steps": 16,
     "batch": [1, 2, 4, 8, 16],            # the batch sizes measured (or estimated)
     "encoder_ms": [...],                  # features + audio encoder + projector, per batch size
     "prompt_ms": [...],                   # the prompt/prefix pass, per batch size
     "step_ms": [...],                     # one denoising step over the canvas, per batch size
     "decode_ms": [...],                   # per-row work, per batch size: the CTC reading through the
                                           # lexicon and the finals' word alignment (optional: 0)
     "request_seconds": 8.0,               # the audio length per request the encoder was measured at
     "encoder_scales": false,              # true: the encoder runs on the audio's own length (the demo),
                                           # so it and the prompt pass (its audio slots) scale with the
                                           # batch's longest audio
     "notes": "how it was made"}

A batch of ``b`` requests with ``s`` steps costs ``encoder_ms(b) + prompt_ms(b) + s *
step_ms(b) + decode_ms(b)``, each linearly interpolated between measured batch sizes (and extrapolated
from the last two beyond them). One batch runs at a time, as in the engine.
``scripts/bench_engine.py --write-costs FILE`` measures one; ``scripts/capacity.py``
replays one in virtual time.

``decode_ms`` is measured on speech, never on noise: the lexicon's beam search and the
alignment follow the words said (on noise the CTC reading is empty and costs nothing), and
it scales with the audio's length whatever the encoder does (it reads only the slots that
hold audio). It is charged to drafts too, which skip only the alignment.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Costs"]


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0] * x / xs[0] if x > xs[0] else ys[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass
class Costs:
    label: str
    kind: str
    device: str
    model: str
    window_seconds: float
    canvas_length: int
    draft_steps: int
    final_steps: int
    batch: list[int]
    encoder_ms: list[float]
    prompt_ms: list[float]
    step_ms: list[float]
    notes: str = ""
    request_seconds: float = 0.0  # 0: a full window
    encoder_scales: bool = False
    decode_ms: list[float] = field(default_factory=list)  # empty: nothing measured (0)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("measured", "estimate"):
            raise ValueError(f"kind must be measured or estimate, got {self.kind!r}")
        lengths = {len(self.batch), len(self.encoder_ms), len(self.prompt_ms), len(self.step_ms)}
        if self.decode_ms:
            lengths.add(len(self.decode_ms))
        if len(lengths) != 1 or sorted(self.batch) != self.batch or self.batch[0] < 1:
            raise ValueError("batch, encoder_ms, prompt_ms, step_ms (and decode_ms) must be lists of one length, "
                             "batch ascending")

    def batch_ms(self, size: int, steps: int, audio_seconds: float | None = None) -> float:
        """Device milliseconds for one batch of ``size`` requests denoised ``steps`` steps.

        ``audio_seconds``: the batch's longest request; it matters only when the encoder
        runs on the audio's own length (``encoder_scales``): then the encoder and the prompt
        pass (whose audio slots follow the audio) scale with it, the canvas steps do not.
        The per-row decode always scales with it.
        """
        front = _interpolate(self.batch, self.encoder_ms, size) + _interpolate(self.batch, self.prompt_ms, size)
        length = 1.0
        if audio_seconds is not None:
            length = min(audio_seconds, self.window_seconds) / (self.request_seconds or self.window_seconds)
        if self.encoder_scales:
            front *= length
        decode = _interpolate(self.batch, self.decode_ms, size) * length if self.decode_ms else 0.0
        return front + steps * _interpolate(self.batch, self.step_ms, size) + decode

    @classmethod
    def load(cls, path: str | Path) -> Costs:
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")
