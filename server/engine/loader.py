"""Loading a model by preset name or directory, onto one device, with clear failures.

How this works
--------------
Every model, the real one included, is a :class:`ModelSpec` whose ``parts`` name a
Hugging Face repo id or a directory for each component. :func:`load_model` resolves
each part to a local directory (a directory is used as is; a repo id goes through
``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE``, ``HF_TOKEN``
and the cache) and then loads every model the same way from local files. So a tiny
model saved by :meth:`AsrModel.save` exercises exactly the code that loads the real
``diffusion-gemma-asr-small``. Hub failures (gated, missing, offline) become a
:class:`ModelLoadError` that names the repo, the licence to accept and the token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from .frames import native_bf16
from .lexicon import LEXICON_DIR, LexiconDecoding
from .model import PROJECTOR_FILE, AsrModel
from .projector import AudioProjector
from .spec import LANGUAGES, SPEC_FILE, ModelSpec, ProjectorConfig

__all__ = ["ModelLoadError", "PRESETS", "REAL_MODEL", "DEMO_MODEL", "DEMO_DIR", "resolve_model_name", "resolve_device", "load_model", "load_whisper_encoder"]

log = logging.getLogger("dgasr.engine")

REAL_MODEL = "diffusion-gemma-asr-small"
# The embedded six-language demo model (frozen whisper-base encoder + trained projector and
# small DiffusionGemma, scripts/train_demo.py), shipped in the repository as package data.
DEMO_MODEL = "demo"
DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"
_LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "hi": "Hindi", "zh": "Mandarin"}

# The real model. The prompt wording is our best reading of the public training code;
# it can be changed without code by putting a dgasr.json next to local copies of the parts.
REAL_SPEC = ModelSpec(
    name=REAL_MODEL,
    parts={
        "whisper": "openai/whisper-small",
        "backbone": "google/diffusiongemma-26B-A4B-it",
        "tokenizer": "google/diffusiongemma-26B-A4B-it",
        "projector": "interfaze-ai/diffusion-gemma-asr-small",
        "adapter": "interfaze-ai/diffusion-gemma-asr-small",
    },
    window_seconds=30.0,
    audio_tokens=188,
    canvas_length=256,
    prompt_template="<start_of_turn>user\n{audio}{language}<end_of_turn>\n<start_of_turn>model\n",
    language_hints={"auto": "Transcribe the audio."}
    | {code: f"Transcribe the audio in {name}." for code, name in _LANGUAGE_NAMES.items()},
    languages=LANGUAGES,
    draft_steps=3,
    final_steps=16,
    projector=ProjectorConfig(in_dim=768, channels=1024, num_layers=3, kernel_size=3, stride=2, out_dim=2816),
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do about it."""


def _tiny(device: torch.device, dtype: torch.dtype) -> AsrModel:
    from server.engine.tiny import build_tiny_random

    return build_tiny_random().to(device, dtype)


PRESETS: dict[str, ModelSpec | Callable[[torch.device, torch.dtype], AsrModel] | Path] = {
    REAL_MODEL: REAL_SPEC,
    "tiny-random": _tiny,
}
if (DEMO_DIR / SPEC_FILE).exists():  # absent only in a checkout that dropped the weights
    PRESETS[DEMO_MODEL] = DEMO_DIR


def resolve_model_name(name: str) -> str:
    """``auto`` -> the real model when CUDA is present, else the embedded ``demo`` model.

    Logs which model was picked and why; never falls back silently from an explicit name
    (a real model asked for and unloadable fails with its own clear error).
    """
    if name != "auto":
        return name
    if torch.cuda.is_available():
        log.info("model auto: CUDA is available, using %s", REAL_MODEL)
        return REAL_MODEL
    if DEMO_MODEL in PRESETS:
        log.info("model auto: no CUDA GPU here, using the embedded demo model (%s needs a GPU with ~60 GB)",
                 REAL_MODEL)
        return DEMO_MODEL
    raise ModelLoadError(
        f"--model auto: no CUDA GPU here, and {REAL_MODEL} needs one (about 52 GB of weights). "
        "Use --model tiny-random to develop without weights (its text is random), "
        "a model directory, or run on a GPU machine."
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ModelLoadError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


_GATED_PARTS = ("backbone", "tokenizer")  # Gemma's terms must be accepted; whisper and the adapter are open


def _hub_hint(repo: str, part: str) -> str:
    if part not in _GATED_PARTS:
        return f"Pass a local copy with --{part} DIR, or allow downloads (unset HF_HUB_OFFLINE)."
    return (
        f"Accept the model's licence at https://huggingface.co/{repo} while logged in, then set "
        f"HF_TOKEN to a token with read access (or run `hf auth login`); or pass a local copy "
        f"with --{part} DIR."
    )


def _resolve_part(source: str, base: Path | None, part: str, patterns: list[str] | None = None) -> Path:
    """A local directory for ``source`` (directory path or Hugging Face repo id)."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{part}: {path} is not a directory")
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"{part}: {source!r} is neither an existing directory nor a Hugging Face repo id")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except GatedRepoError:
        raise ModelLoadError(f"{part}: {source} is gated and this token has no access. {_hub_hint(source, part)}") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{part}: {source} was not found, or is private or gated. {_hub_hint(source, part)}"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else ""
        raise ModelLoadError(
            f"{part}: {source} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be "
            f"downloaded{offline}. Download it once where the network is reachable (`hf download {source}`), "
            f"or pass a local copy with --{part} DIR. {_hub_hint(source, part)}"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"{part}: could not download {source}: {exc}. {_hub_hint(source, part)}") from None


def _state_dict(directory: Path, part: str) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{part}: no .safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_whisper_encoder(directory: Path):
    """The whisper encoder (and its feature extractor) from a full whisper checkpoint or a bare encoder."""
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if not (directory / "config.json").exists():
        raise ModelLoadError(f"whisper: {directory} has no config.json")
    config = WhisperConfig.from_pretrained(directory)
    encoder = WhisperEncoder(config)
    state = _state_dict(directory, "whisper")
    for prefix in ("model.encoder.", "encoder.", ""):  # WhisperForConditionalGeneration / WhisperModel / encoder
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub and set(encoder.state_dict()) <= set(sub):
            encoder.load_state_dict({k: sub[k] for k in encoder.state_dict()})
            break
    else:
        raise ModelLoadError(f"whisper: the weights in {directory} do not contain a whisper encoder")
    if (directory / "preprocessor_config.json").exists():
        features = WhisperFeatureExtractor.from_pretrained(directory)
    else:
        features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return features, encoder


def _load_projector(directory: Path, config: ProjectorConfig) -> AudioProjector:
    candidates = [directory / PROJECTOR_FILE, *sorted(directory.glob("*projector*.safetensors"))]
    file = next((c for c in candidates if c.exists()), None)
    if file is None:
        raise ModelLoadError(f"projector: no {PROJECTOR_FILE} in {directory}")
    state = load_file(str(file))
    state = {k.removeprefix("projector."): v for k, v in state.items()}
    projector = AudioProjector(config)
    try:
        projector.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"projector: {file} does not match the declared projector shape: {exc}") from None
    return projector


def _untie_lora_targets(peft_model) -> int:
    """Give each LoRA-wrapped layer its own copy of a weight it shares with another one.

    DiffusionGemma ties its encoder and decoder layers (one tensor serves both), while
    the ASR adapter trains separate LoRA deltas for each. Merging both deltas into the
    shared tensor would corrupt both; untying just the targeted projections first costs
    their memory once more and keeps the merged model exact. Returns how many were untied.
    """
    from torch import nn

    wrapped = [m for m in peft_model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    owners: dict[int, int] = {}
    for module in wrapped:
        ptr = module.base_layer.weight.data_ptr()
        owners[ptr] = owners.get(ptr, 0) + 1
    untied = 0
    for module in wrapped:
        weight = module.base_layer.weight
        if owners[weight.data_ptr()] > 1:
            owners[weight.data_ptr()] -= 1
            module.base_layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
            untied += 1
    return untied


def _load_backbone(spec: ModelSpec, base: Path | None, device: torch.device, dtype: torch.dtype):
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    directory = _resolve_part(spec.parts["backbone"], base, "backbone", ["*.json", "*.safetensors", "*.model"])
    if not (directory / "config.json").exists():
        raise ModelLoadError(f"backbone: {directory} has no config.json")
    kwargs: dict = {"dtype": dtype}
    if device.type == "cuda":
        kwargs["device_map"] = str(device)  # stream weights straight to the GPU
    backbone = DiffusionGemmaForBlockDiffusion.from_pretrained(directory, **kwargs)
    adapter = spec.parts.get("adapter")
    if adapter:
        from peft import PeftModel

        adapter_dir = _resolve_part(adapter, base, "adapter", ["*.json", "*.safetensors"])
        if not (adapter_dir / "adapter_config.json").exists():
            raise ModelLoadError(f"adapter: {adapter_dir} has no adapter_config.json (a PEFT LoRA adapter)")
        peft_model = PeftModel.from_pretrained(backbone, adapter_dir)
        if spec.merge_lora:
            _untie_lora_targets(peft_model)
            backbone = peft_model.merge_and_unload()
        else:
            backbone = peft_model.get_base_model()
    tok_source = spec.parts.get("tokenizer", spec.parts["backbone"])
    tok_dir = _resolve_part(tok_source, base, "tokenizer", ["*.json", "*.model", "*.txt"])
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return backbone, tokenizer


_PATTERNS = {
    "whisper": ["*.json", "*.safetensors"],
    "projector": ["*.json", "*.safetensors"],
    "backbone": ["*.json", "*.safetensors", "*.model"],
    "adapter": ["*.json", "*.safetensors"],
    "tokenizer": ["*.json", "*.model", "*.txt"],
}


def _check_parts(spec: ModelSpec, base: Path | None) -> None:
    """Resolve every part before loading any, so one message names everything that is missing."""
    problems = []
    seen = set()
    for part, source in spec.parts.items():
        if source and source not in seen:  # the real model's tokenizer and adapter share repos
            seen.add(source)
            try:
                _resolve_part(source, base, part, _PATTERNS.get(part))
            except ModelLoadError as exc:
                problems.append(str(exc))
    if len(problems) == 1:
        raise ModelLoadError(problems[0])
    if problems:
        raise ModelLoadError(f"{len(problems)} parts of {spec.name} are missing: " + " | ".join(problems))


def _load_spec(spec: ModelSpec, base: Path | None, device: torch.device, dtype: torch.dtype, source: str) -> AsrModel:
    _check_parts(spec, base)
    if spec.name == REAL_MODEL and device.type == "cpu":
        raise ModelLoadError(
            f"{REAL_MODEL} needs a CUDA GPU with about 60 GB of memory; on a CPU it would load about 100 GB "
            "of weights in float32. Use --device cuda on a GPU machine, or --model demo here."
        )
    whisper_dir = _resolve_part(spec.parts["whisper"], base, "whisper", ["*.json", "*.safetensors"])
    features, whisper = load_whisper_encoder(whisper_dir)
    projector_dir = _resolve_part(spec.parts["projector"], base, "projector", ["*.json", "*.safetensors"])
    projector = _load_projector(projector_dir, spec.projector)
    backbone, tokenizer = _load_backbone(spec, base, device, dtype)
    if backbone.config.canvas_length != spec.canvas_length:
        log.info("canvas length %d taken from the backbone config", backbone.config.canvas_length)
        spec = dataclasses.replace(spec, canvas_length=backbone.config.canvas_length)
    lexicon = None
    if base is not None and (base / LEXICON_DIR).is_dir() and spec.canvas_start == "ctc":
        try:
            lexicon = LexiconDecoding.from_dir(base / LEXICON_DIR, tokenizer, backbone.config.text_config.pad_token_id)
        except ValueError as exc:  # two files for one language, a malformed phoneme inventory
            raise ModelLoadError(f"lexicon: {exc}") from None
        if lexicon is not None:
            said = len(lexicon.phones) if lexicon.phones else 0
            if said != spec.projector.phones:
                raise ModelLoadError(f"{base / LEXICON_DIR}: spelled in {said or 'no'} phonemes, but the projector "
                                     f"reads {spec.projector.phones or 'no'} phonemes")
            log.info("lexicon decoding for %s%s", ", ".join(lexicon.languages), " (in phonemes)" if said else "")
    model = AsrModel(spec, features, whisper, projector, backbone, tokenizer, source=source,
                     lexicon=lexicon).to(device, dtype)
    model.audio_dtype = _audio_dtype(spec, device, dtype)
    return model


def _audio_dtype(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """bf16 autocast for the encoder and projector of a float32 model that allows it
    (``spec.cpu_audio_bf16``) on a CPU that computes bf16 natively: there it halves their
    time. ``DGASR_AUDIO_BF16=0`` keeps float32; ``1`` forces bf16 for any model on a CPU
    (one without native bf16 emulates it, slowly). None elsewhere."""
    if device.type != "cpu" or dtype != torch.float32:
        return None
    wanted = os.environ.get("DGASR_AUDIO_BF16", "").strip()
    if wanted not in ("", "0", "1"):
        raise ModelLoadError(f"DGASR_AUDIO_BF16 must be 0 or 1, not {wanted!r}")
    if wanted == "1" or (not wanted and spec.cpu_audio_bf16 and native_bf16()):
        log.info("encoder and projector in bf16 autocast (%s)",
                 "DGASR_AUDIO_BF16=1" if wanted else "this CPU computes bf16 natively; DGASR_AUDIO_BF16=0 keeps float32")
        return torch.bfloat16
    return None


def _apply_overrides(spec: ModelSpec, overrides: dict[str, str | None]) -> ModelSpec:
    """Per-part overrides; an adapter override also moves the projector when both share a source.

    The real model ships its projector weights and its LoRA in one repository, so a local
    copy of that repository passed as the adapter must serve the projector too.
    """
    overrides = dict(overrides)
    shared = spec.parts.get("projector") == spec.parts.get("adapter")
    if overrides.get("adapter") and not overrides.get("projector") and shared:
        overrides["projector"] = overrides["adapter"]
    return spec.with_parts(**overrides)


def load_model(
    name: str = REAL_MODEL,
    device: str | torch.device = "auto",
    *,
    dtype: torch.dtype | None = None,
    parts: dict[str, str | None] | None = None,
) -> AsrModel:
    """Load a preset (``diffusion-gemma-asr-small``, ``demo``, ``tiny-random``) or a model directory.

    Args:
        name: preset name, or a directory holding ``dgasr.json``.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: defaults to bfloat16 on CUDA and float32 on CPU.
        parts: per-part overrides (``whisper``/``backbone``/``tokenizer``/``projector``/
            ``adapter`` -> repo id or directory); environment ``DGASR_<PART>`` also works.

    Raises:
        ModelLoadError: with a message a user can act on (never a bare stack trace).
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    overrides = {k: os.environ.get(f"DGASR_{k.upper()}") for k in ("whisper", "backbone", "tokenizer", "projector", "adapter")}
    overrides.update({k: v for k, v in (parts or {}).items() if v})
    preset = PRESETS.get(name)
    if callable(preset):
        return preset(device, dtype)
    if isinstance(preset, ModelSpec):
        return _load_spec(_apply_overrides(preset, overrides), None, device, dtype, name)
    directory = preset if isinstance(preset, Path) else Path(name).expanduser()
    if not (directory / SPEC_FILE).exists():
        known = ", ".join(PRESETS)
        raise ModelLoadError(f"unknown model {name!r}: not a preset ({known}) nor a directory with {SPEC_FILE}")
    try:
        spec = ModelSpec.load(directory)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{directory / SPEC_FILE}: {exc}") from None
    return _load_spec(_apply_overrides(spec, overrides), directory, device, dtype, name if preset else str(directory))
