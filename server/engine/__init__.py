"""The diffusion ASR engine: model loading, batched denoising, and the device worker.

Layers: :mod:`.spec` (what a model declares), :mod:`.loader` (presets, directories, hub),
:mod:`.model` (the loaded parts and the on-disk layout), :mod:`.denoise` (one batched
pass, pure device work), :mod:`.runner` (the one thread that owns the device).
"""

from server.core.requests import (
    AudioTooLong,
    EngineError,
    InvalidRequest,
    PhaseTimings,
    TranscribeRequest,
    TranscribeResult,
)

from .loader import PRESETS, REAL_MODEL, ModelLoadError, load_model, resolve_device
from .model import AsrModel
from .runner import Engine, EngineState
from .spec import LANGUAGES, ModelSpec

__all__ = [
    "PRESETS",
    "REAL_MODEL",
    "LANGUAGES",
    "ModelLoadError",
    "load_model",
    "resolve_device",
    "AsrModel",
    "Engine",
    "EngineState",
    "ModelSpec",
    "AudioTooLong",
    "EngineError",
    "InvalidRequest",
    "PhaseTimings",
    "TranscribeRequest",
    "TranscribeResult",
]
