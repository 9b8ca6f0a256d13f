"""What a model declares about itself, so the server never hard-codes it.

A :class:`ModelSpec` travels with every model: the real preset builds one in code, a
model directory stores one in ``dgasr.json``. The server reads the audio window (to
size segments), the canvas length, the prompt template (with its language hint) and
the default draft/final step counts from here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.core import pcm

__all__ = ["LANGUAGES", "WHISPER_FRAMES_PER_SECOND", "CANVAS_STARTS", "SamplerSettings", "ProjectorConfig", "NoiseGate", "ModelSpec", "SPEC_FILE", "FORMAT_VERSION"]

LANGUAGES = pcm.LANGUAGES
SPEC_FILE = "dgasr.json"
CANVAS_STARTS = ("random", "ctc")
FORMAT_VERSION = 1
WHISPER_FRAMES_PER_SECOND = 50  # whisper encoder output rate: 100 mel frames/s, conv2 stride 2


@dataclass(frozen=True)
class SamplerSettings:
    """DiffusionGemma sampler knobs; defaults are transformers' own generation defaults.

    ``keep_start_below`` is dgasr's own: a canvas that started from the model's reading of
    the audio (``canvas_start="ctc"``, or a warm start) keeps its start token wherever the
    denoiser's final choice is less probable than this (its softmax before temperature).
    The reading is evidence, not noise: a small denoiser unsure of a rare letter ("è",
    "ç") should not replace it by its guess. 0 (the default) always takes the choice.
    """

    t_min: float = 0.4
    t_max: float = 0.8
    entropy_bound: float = 0.1
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    keep_start_below: float = 0.0


@dataclass(frozen=True)
class ProjectorConfig:
    """Shape of the audio projector: strided 1-D convs (time subsampling) then a linear map.

    Whisper-small gives 1500 frames x 768 per 30 s; three stride-2 convs give 188 frames,
    which a linear maps to the backbone width (2816 for the real model).
    """

    in_dim: int = 768
    channels: int = 1024
    num_layers: int = 3
    kernel_size: int = 3
    stride: int = 2
    out_dim: int = 2816
    # Per-layer strides when they differ (e.g. (2, 1): subsample once, then one more
    # layer of context at the same rate); empty = ``stride`` for every layer.
    strides: tuple[int, ...] = ()
    # Residual depthwise-conv context blocks after the convs (0 for the real model): a
    # CTC reading through the lm_head emits a whole-word subword at one frame, so each
    # frame must see the whole word (a kernel of 15 at 25 frames/s spans 0.6 s per block).
    context_blocks: int = 0
    context_kernel: int = 15
    # Size of a phoneme CTC head's inventory (blank first), read from the hidden state before
    # the final linear; 0 = none. With it a lexicon spelled in phonemes turns what the audio
    # says into spelled words (server/engine/lexicon.py).
    phones: int = 0

    def layer_strides(self) -> tuple[int, ...]:
        return self.strides or (self.stride,) * self.num_layers

    def output_frames(self, input_frames: int) -> int:
        n = input_frames
        pad = self.kernel_size // 2
        for stride in self.layer_strides():
            n = (n + 2 * pad - self.kernel_size) // stride + 1
        return n


@dataclass(frozen=True)
class NoiseGate:
    """Which short transcripts come back empty: what a model makes of noise.

    VAD passes loud noise (a fan, a crowd) as speech, and a model asked to read it returns
    a letter or a word or two ("a", "7", "des la"). Such text is barely in the audio: its
    tokens' CTC alignment scores (see :mod:`server.engine.words`) are low, or it is far too
    little text for the seconds of sound it came from (a crowd gives a segment of seconds,
    a spoken "seven" one of about a second). A transcript at most ``max_chars`` wide (spaces
    aside; a Hanzi, which is a syllable, counts two, as on a terminal) is returned empty
    when its words' mean confidence is below ``min_confidence`` or when it has fewer than
    ``min_chars_per_second`` of that width per second of its audio. ``max_chars = 0`` (the
    default) turns it off; all three are a model's own calibration, so they live in its
    ``dgasr.json``.
    """

    max_chars: int = 0
    min_confidence: float = 0.0
    min_chars_per_second: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine and the server need to know about one ASR model.

    ``parts`` maps each component (``whisper``, ``backbone``, ``tokenizer``,
    ``projector``, optional ``adapter``) to a Hugging Face repo id or a directory
    (relative paths are resolved against the model directory holding ``dgasr.json``).

    ``prompt_template`` contains ``{audio}`` (expanded to begin-of-audio, ``audio_tokens``
    placeholders and end-of-audio) and ``{language}`` (replaced by ``language_hints[code]``,
    or ``language_hints["auto"]`` when no language was given).

    ``canvas_start`` is where a pass without a warm start begins: ``"random"`` (uniformly
    random tokens, DiffusionGemma's own start) or ``"ctc"`` (the greedy CTC reading of the
    audio embeddings through the lm_head, which the CTC training loss makes meaningful;
    the denoiser then corrects a nearly right canvas instead of inventing one).

    ``encoder_bucket_seconds`` says how much audio the whisper encoder sees. ``0`` pads
    every request to the full window, as whisper does and as the real model was trained;
    ``> 0`` encodes the audio's own length rounded up to a multiple of it (a model
    trained that way, like the demo), so a 2 s draft does not pay for a full-window
    encode. The prompt then holds as many audio slots as the projector makes of it.

    ``cpu_audio_bf16`` lets the loader run the encoder and projector of a float32 model in
    bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16, AMX): about twice as
    fast there, for a model whose training frames were computed that way (the demo).
    """

    name: str
    parts: dict[str, str]
    window_seconds: float = 30.0
    sample_rate: int = pcm.SAMPLE_RATE
    audio_tokens: int = 188
    canvas_length: int = 256
    prompt_template: str = "{audio}{language}"
    language_hints: dict[str, str] = field(default_factory=lambda: {"auto": ""})
    languages: tuple[str, ...] = LANGUAGES
    draft_steps: int = 3
    final_steps: int = 16
    max_steps: int = 64
    sampler: SamplerSettings = SamplerSettings()
    projector: ProjectorConfig = ProjectorConfig()
    noise_gate: NoiseGate = NoiseGate()
    merge_lora: bool = True
    canvas_start: str = "random"
    encoder_bucket_seconds: float = 0.0
    cpu_audio_bf16: bool = False

    def __post_init__(self) -> None:
        if self.canvas_start not in CANVAS_STARTS:
            raise ValueError(f"canvas_start must be one of {', '.join(CANVAS_STARTS)}, got {self.canvas_start!r}")
        if not 0 <= self.encoder_bucket_seconds <= self.window_seconds:
            raise ValueError(f"encoder_bucket_seconds must be between 0 and the window ({self.window_seconds:g} s), "
                             f"got {self.encoder_bucket_seconds!r}")

    def encoder_samples(self, samples: int) -> int:
        """How many samples of audio the encoder sees for ``samples`` of input (see above)."""
        if not self.encoder_bucket_seconds:
            return self.window_samples
        bucket = int(round(self.encoder_bucket_seconds * self.sample_rate))
        return min(self.window_samples, max(1, -(-samples // bucket)) * bucket)

    def audio_slots(self, samples: int) -> int:
        """Audio placeholder slots in the prompt for ``samples`` of input audio."""
        if not self.encoder_bucket_seconds:
            return self.audio_tokens
        return self.projector.output_frames(self.encoder_samples(samples) * WHISPER_FRAMES_PER_SECOND // self.sample_rate)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["languages"] = list(self.languages)
        data["projector"]["strides"] = list(self.projector.strides)
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported {SPEC_FILE} format_version {version} (this dgasr reads {FORMAT_VERSION})")
        data["sampler"] = SamplerSettings(**data.get("sampler", {}))
        projector = dict(data.get("projector", {}))
        projector["strides"] = tuple(projector.get("strides", ()))
        data["projector"] = ProjectorConfig(**projector)
        data["noise_gate"] = NoiseGate(**data.get("noise_gate", {}))
        data["languages"] = tuple(data.get("languages", LANGUAGES))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fields in {SPEC_FILE}: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, directory: Path) -> None:
        (directory / SPEC_FILE).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ModelSpec:
        return cls.from_dict(json.loads((directory / SPEC_FILE).read_text()))

    def with_parts(self, **overrides: str | None) -> ModelSpec:
        parts = dict(self.parts)
        for key, value in overrides.items():
            if value:
                parts[key] = value
        return dataclasses.replace(self, parts=parts)
