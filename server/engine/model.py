"""The loaded ASR model: its parts, its prompt, and the project's on-disk layout.

An :class:`AsrModel` bundles the five parts of diffusion-gemma-asr: the whisper feature
extractor and encoder, the projector, the DiffusionGemma backbone and its tokenizer,
together with the :class:`ModelSpec` that describes them. It knows how to build a
prompt (audio placeholders + language hint), how to turn a canvas back into text, and
how to save itself in the directory layout that :func:`server.engine.loader.load_model`
reads back through the same code path as the real model::

    MODEL_DIR/dgasr.json             spec (window, canvas, prompt, steps, parts)
    MODEL_DIR/whisper/               WhisperConfig + safetensors + preprocessor_config.json
    MODEL_DIR/projector/             projector.safetensors
    MODEL_DIR/backbone/              DiffusionGemmaForBlockDiffusion (config + safetensors)
    MODEL_DIR/tokenizer/             tokenizer files
    MODEL_DIR/adapter/               optional PEFT LoRA adapter (adapter_config.json + weights)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DiffusionGemmaForBlockDiffusion, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .projector import AudioProjector
from .spec import ModelSpec

__all__ = ["AsrModel", "PROJECTOR_FILE"]

PROJECTOR_FILE = "projector.safetensors"
_PLACEHOLDER = re.compile(r"(\{audio\}|\{language\})")


@dataclass
class AsrModel:
    spec: ModelSpec
    feature_extractor: WhisperFeatureExtractor
    whisper: WhisperEncoder
    projector: AudioProjector
    backbone: DiffusionGemmaForBlockDiffusion
    tokenizer: object  # a transformers fast tokenizer
    source: str = "in-memory"
    lexicon: object = None  # a LexiconDecoding (engine/lexicon.py) when the model directory has one
    audio_dtype: torch.dtype | None = None  # autocast of the encoder and projector (None: their own dtype)

    def __post_init__(self) -> None:
        self._prompt_cache: dict[tuple[str | None, int], list[int]] = {}
        cfg = self.backbone.config
        if cfg.canvas_length != self.spec.canvas_length:
            raise ValueError(f"backbone canvas_length {cfg.canvas_length} != spec {self.spec.canvas_length}")
        frames = self.whisper.config.max_source_positions
        if self.spec.projector.output_frames(frames) != self.spec.audio_tokens:
            raise ValueError(
                f"projector turns {frames} whisper frames into {self.spec.projector.output_frames(frames)} "
                f"embeddings, but the spec declares {self.spec.audio_tokens} audio tokens"
            )

    # ---- prompt and text ---------------------------------------------------

    @property
    def eos_token_id(self) -> int:
        eos = self.backbone.config.text_config.eos_token_id
        return eos[0] if isinstance(eos, list) else eos

    def prompt_ids(self, language: str | None, audio_slots: int | None = None) -> list[int]:
        """Token ids of the prompt for ``language`` (None = automatic), audio slots included.

        ``audio_slots`` defaults to the full window's ``audio_tokens``; a model that encodes
        audio at its own length (``encoder_bucket_seconds``) passes ``spec.audio_slots(n)``.
        """
        if language is not None and language not in self.spec.languages:
            raise ValueError(f"language {language!r} not supported; expected one of {', '.join(self.spec.languages)}")
        slots = self.spec.audio_tokens if audio_slots is None else audio_slots
        cached = self._prompt_cache.get((language, slots))
        if cached is not None:
            return cached
        cfg = self.backbone.config
        hints = self.spec.language_hints
        hint = hints.get(language or "auto", hints.get("auto", ""))
        ids: list[int] = []
        for piece in _PLACEHOLDER.split(self.spec.prompt_template):
            if piece == "{audio}":
                ids += [cfg.boi_token_id] + [cfg.image_token_id] * slots + [cfg.eoi_token_id]
            elif piece == "{language}":
                ids += self.tokenizer(hint, add_special_tokens=False).input_ids if hint else []
            elif piece:
                ids += self.tokenizer(piece, add_special_tokens=False).input_ids
        self._prompt_cache[(language, slots)] = ids
        return ids

    def canvas_tokens(self, canvas: list[int]) -> list[int]:
        """The transcript's tokens: everything before the first end-of-sequence token."""
        eos = self.eos_token_id
        return canvas[: canvas.index(eos)] if eos in canvas else list(canvas)

    def decode(self, canvas: list[int]) -> str:
        text = self.tokenizer.decode(self.canvas_tokens(canvas), skip_special_tokens=True)
        return " ".join(text.split())

    # ---- device ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def to(self, device: torch.device, dtype: torch.dtype) -> AsrModel:
        for module in (self.whisper, self.projector, self.backbone):
            module.to(device=device, dtype=dtype)
            module.eval()
        return self

    # ---- saving ------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the model in dgasr's on-disk layout (see module docstring).

        LoRA is saved merged into the backbone; a separate ``adapter/`` directory is only
        ever read (the real adapter repo ships one), never written here.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.whisper.save_pretrained(out / "whisper")
        self.feature_extractor.save_pretrained(out / "whisper")
        (out / "projector").mkdir(exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
        save_file(state, str(out / "projector" / PROJECTOR_FILE))
        parts = {"whisper": "whisper", "projector": "projector", "backbone": "backbone", "tokenizer": "tokenizer"}
        self.backbone.save_pretrained(out / "backbone")
        self.tokenizer.save_pretrained(out / "tokenizer")
        dataclasses.replace(self.spec, parts=parts).save(out)
        return out
