"""scripts/train_denoiser.py: only the denoiser learns; what reads the audio stays the shipped model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from server.engine import TranscribeRequest, load_model
from server.engine.denoise import run_batch

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "server" / "models" / "demo"


def _shard(folder: Path) -> None:
    """One shard of four utterances: encoder frames (here random: what the denoiser learns from
    them does not matter, only which weights move) and their transcripts."""
    folder.mkdir()
    texts = [("the night was cold", "en"), ("une maison française", "fr"), ("hallo welt", "de"), ("sí señor", "es")]
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((4 * 100, 512)).astype(np.float16)
    rows = [{"text": t, "language": lang, "voice": "test", "start": 100 * i, "frames": 100}
            for i, (t, lang) in enumerate(texts)]
    (folder / "0000.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    np.save(folder / "0000.npy", frames)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_denoiser.py"), "--model", str(SHIPPED),
                           "--threads", "1", *args], capture_output=True, text=True, timeout=240, cwd=ROOT)


def test_training_moves_the_denoiser_alone_and_the_export_serves_it(tmp_path):
    _shard(tmp_path / "shards")
    state = tmp_path / "state.pt"
    run = _run("--data", str(tmp_path / "shards"), "--state", str(state), "--minutes", "0.15", "--rows", "2",
               "--lr", "5e-3")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "saved step" in run.stdout
    out = tmp_path / "export"
    run = _run("--state", str(state), "--export", str(out))
    assert run.returncode == 0, run.stderr[-2000:]

    shipped, trained = load_model(str(SHIPPED), "cpu"), load_model(str(out), "cpu")
    for name in ("whisper", "projector"):  # what reads the audio: bit for bit the shipped weights
        a, b = getattr(shipped, name).state_dict(), getattr(trained, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = shipped.backbone.state_dict(), trained.backbone.state_dict()
    embeddings = [k for k in a if "embed_tokens" in k or k == "lm_head.weight"]
    assert embeddings and all(torch.equal(a[k], b[k]) for k in embeddings)  # the character reading's too
    moved = [k for k in a if k.startswith("model.decoder.layers") and not torch.equal(a[k], b[k])]
    assert len(moved) > 10
    # the lexicons, the phoneme inventory and the spec come along: the export is a whole model
    assert trained.lexicon is not None and trained.lexicon.phones == shipped.lexicon.phones
    assert trained.spec == shipped.spec
    for path in (SHIPPED / "lexicon").iterdir():
        assert (out / "lexicon" / path.name).read_bytes() == path.read_bytes()
    audio = (np.random.default_rng(1).standard_normal(16000) * 0.05).astype(np.float32)
    assert len(run_batch(trained, [TranscribeRequest(audio, 1, "en")])) == 1
