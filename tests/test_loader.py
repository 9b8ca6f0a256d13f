"""Loading models through the real loader: the on-disk layout, LoRA adapters, hub errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from server.engine import ModelLoadError, TranscribeRequest, load_model
from server.engine.denoise import run_batch
from server.engine.loader import load_whisper_encoder
from server.engine.tiny import build_tiny_random


def _requests():
    rng = np.random.default_rng(0)
    return [
        TranscribeRequest((rng.standard_normal(n) * 0.1).astype(np.float32), steps=s, seed=i)
        for i, (n, s) in enumerate([(16000, 3), (64000, 8)])
    ]


def test_loader_round_trips_tiny_model_through_the_disk_layout(tmp_path):
    """save() then load_model(dir) gives a model that transcribes identically."""
    original = build_tiny_random(seed=3)
    original.save(tmp_path / "m")
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert "dgasr.json" in files and "projector/projector.safetensors" in files
    assert any(f.startswith("backbone/") and f.endswith(".safetensors") for f in files)
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    assert loaded.spec.window_seconds == 8.0 and loaded.spec.audio_tokens == 50
    assert loaded.prompt_ids("en") == original.prompt_ids("en")
    a = run_batch(original, _requests())
    b = run_batch(loaded, _requests())
    assert [r.canvas for r in a] == [r.canvas for r in b]
    assert [r.text for r in a] == [r.text for r in b]


def test_loader_merges_a_peft_lora_adapter_from_the_model_directory(tmp_path):
    """A PEFT LoRA adapter directory named in dgasr.json is applied (and merged) at load."""
    from peft import LoraConfig, get_peft_model

    tiny = build_tiny_random(seed=4)
    tiny.save(tmp_path / "m")
    base = load_model(str(tmp_path / "m"), device="cpu").backbone
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*(language_model|decoder)\.layers\.\d+\.self_attn\.(q_proj|v_proj)"))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    lora.save_pretrained(tmp_path / "m" / "adapter")
    spec = json.loads((tmp_path / "m" / "dgasr.json").read_text())
    spec["parts"]["adapter"] = "adapter"
    (tmp_path / "m" / "dgasr.json").write_text(json.dumps(spec))

    with_adapter = load_model(str(tmp_path / "m"), device="cpu")
    assert not any("lora" in n for n, _ in with_adapter.backbone.named_parameters())  # merged
    ids = torch.tensor([[2, 10, 11, 12]])
    with torch.no_grad():
        expected = lora.get_base_model().model.encoder(input_ids=ids).last_hidden_state
        got = with_adapter.backbone.model.encoder(input_ids=ids).last_hidden_state
        plain = tiny.backbone.model.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really changed the model
    # Encoder and decoder share weights but have separate LoRA deltas: the whole pipeline
    # (encoder and decoder) must match the unmerged PEFT model.
    unmerged = dataclasses.replace(with_adapter, backbone=lora.get_base_model())
    assert [r.canvas for r in run_batch(with_adapter, _requests())] == [
        r.canvas for r in run_batch(unmerged, _requests())
    ]


def test_loader_reads_whisper_encoder_from_a_full_whisper_checkpoint(tmp_path):
    """openai/whisper-* repos hold WhisperForConditionalGeneration; the loader takes its encoder."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=100,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )
    full = WhisperForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path / "w")
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(tmp_path / "w")
    features, encoder = load_whisper_encoder(tmp_path / "w")
    assert features.n_samples == 32000
    x = torch.randn(1, 80, 200)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x).last_hidden_state, full.model.encoder(x).last_hidden_state)


def test_loader_names_repo_licence_and_token_when_weights_are_missing_offline(tmp_path):
    """Offline with an empty cache, the real preset fails with an actionable one-line message."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.getcwd())
    env.pop("HF_TOKEN", None)
    code = "from server.engine import load_model; load_model('diffusion-gemma-asr-small', device='cpu')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ModelLoadError" in last and "3 parts of diffusion-gemma-asr-small are missing" in last
    for repo in ("openai/whisper-small", "google/diffusiongemma-26B-A4B-it", "interfaze-ai/diffusion-gemma-asr-small"):
        assert repo in last
    assert "HF_HUB_OFFLINE=1" in last
    # only the gated backbone needs a licence accepted
    assert last.count("Accept the model's licence") == 1
    assert "https://huggingface.co/google/diffusiongemma-26B-A4B-it" in last and "HF_TOKEN" in last
    assert "https://huggingface.co/openai/whisper-small" not in last


def test_loader_refuses_the_real_model_on_a_cpu_with_what_to_use_instead(tmp_path, monkeypatch):
    """Its weights present but no GPU: a clear refusal instead of a silent ~100 GB fp32 load."""
    from server.engine import loader

    monkeypatch.setattr(loader, "_check_parts", lambda spec, base: None)
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU.*--model demo"):
        load_model("diffusion-gemma-asr-small", device="cpu")


def test_loader_rejects_unknown_names_and_incomplete_directories(tmp_path):
    """Unknown presets and directories missing parts give messages naming what is missing."""
    with pytest.raises(ModelLoadError, match="unknown model 'nope'.*tiny-random"):
        load_model("nope", device="cpu")
    build_tiny_random().save(tmp_path / "m")
    for f in (tmp_path / "m" / "projector").iterdir():
        f.unlink()
    with pytest.raises(ModelLoadError, match="projector: no projector.safetensors"):
        load_model(str(tmp_path / "m"), device="cpu")
    with pytest.raises(ModelLoadError, match="no usable CUDA GPU"):
        load_model("tiny-random", device="cuda")


def test_loader_adapter_override_moves_the_projector_when_they_share_a_repo():
    """The real model keeps projector and LoRA in one repo: --adapter DIR must serve both."""
    from server.engine.loader import REAL_SPEC, _apply_overrides

    spec = _apply_overrides(REAL_SPEC, {"adapter": "/data/asr-adapter", "whisper": None})
    assert spec.parts["adapter"] == spec.parts["projector"] == "/data/asr-adapter"
    assert spec.parts["whisper"] == "openai/whisper-small"
    separate = REAL_SPEC.with_parts(projector="/p")
    assert _apply_overrides(separate, {"adapter": "/a"}).parts["projector"] == "/p"


def test_model_auto_picks_the_embedded_demo_without_cuda_and_says_why(tmp_path, monkeypatch, caplog):
    """With a demo checkpoint present and no CUDA, auto is the demo; with CUDA, the real model."""
    import logging

    from server.engine import loader

    build_tiny_random().save(tmp_path / "demo")
    monkeypatch.setattr(loader, "PRESETS", {**loader.PRESETS, loader.DEMO_MODEL: tmp_path / "demo"})
    monkeypatch.setattr(loader.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="dgasr.engine"):
        assert loader.resolve_model_name("auto") == "demo"
    assert any("no CUDA GPU" in r.getMessage() and "demo" in r.getMessage() for r in caplog.records)
    assert load_model("demo", device="cpu").spec.name == "tiny-random"  # the preset loads that directory
    monkeypatch.setattr(loader.torch.cuda, "is_available", lambda: True)
    assert loader.resolve_model_name("auto") == "diffusion-gemma-asr-small"
    assert loader.resolve_model_name("tiny-random") == "tiny-random"  # an explicit name is never changed


def test_a_model_that_allows_it_hears_in_bf16_on_a_cpu_with_native_bf16_and_the_env_overrides(tmp_path, monkeypatch):
    """The demo's audio path runs in bf16 autocast where the CPU computes bf16 natively (twice as
    fast there); a model that does not declare ``cpu_audio_bf16`` keeps float32, and so does a
    CPU without native bf16 (it would emulate it, slowly), unless DGASR_AUDIO_BF16 says otherwise."""
    from server.engine import loader

    allows = build_tiny_random(seed=0)
    allows.spec = dataclasses.replace(allows.spec, cpu_audio_bf16=True)
    allows.save(tmp_path / "allows")
    build_tiny_random(seed=0).save(tmp_path / "plain")
    monkeypatch.delenv("DGASR_AUDIO_BF16", raising=False)

    def dtypes() -> tuple:
        return tuple(load_model(str(tmp_path / name), "cpu").audio_dtype for name in ("allows", "plain"))

    monkeypatch.setattr(loader, "native_bf16", lambda: True)
    assert dtypes() == (torch.bfloat16, None)
    assert load_model(str(tmp_path / "allows"), "cpu", dtype=torch.bfloat16).audio_dtype is None  # already bf16
    monkeypatch.setattr(loader, "native_bf16", lambda: False)
    assert dtypes() == (None, None)
    monkeypatch.setenv("DGASR_AUDIO_BF16", "1")
    assert dtypes() == (torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(loader, "native_bf16", lambda: True)
    monkeypatch.setenv("DGASR_AUDIO_BF16", "0")
    assert dtypes() == (None, None)
    monkeypatch.setenv("DGASR_AUDIO_BF16", "yes")
    with pytest.raises(ModelLoadError, match="DGASR_AUDIO_BF16 must be 0 or 1, not 'yes'"):
        load_model(str(tmp_path / "allows"), "cpu")
