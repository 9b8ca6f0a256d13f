"""scripts/train_demo_live.py: synthesize-and-train writes a projector the real loader serves.

The script is how the shipped projector was trained on a lent GPU machine; here it runs
on the CPU for a few steps (one synthesis worker, the 3,000-word split, which needs no
wordfreq), which is enough to pin what it writes and how it reads its own progress.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from server.core.requests import TranscribeRequest
from server.engine import load_model
from server.engine.denoise import run_batch

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "server" / "models" / "demo"
sys.path.insert(0, str(ROOT / "scripts"))
import demo_data  # noqa: E402
from scoring import error_rate  # noqa: E402


def test_live_training_writes_a_projector_the_loader_serves(tmp_path):
    out = tmp_path / "live"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_demo_live.py"), "--model", str(SHIPPED), "--out", str(out),
         "--workers", "1", "--minutes", "0.15", "--top-words", "3000", "--dev-per-language", "2",
         "--frames-per-batch", "2000", "--encode-batch", "4", "--max-views", "4", "--eval-every", "5",
         "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    log = run.stdout
    # the dev error is read per language at the start and at the end
    for label in ("eval start", "eval end"):
        line = next(x for x in log.splitlines() if x.startswith(label))
        rates = dict(re.findall(r" (en|de|fr|es|hi|zh) ([0-9.]+)", line))
        assert sorted(rates) == sorted(demo_data.LANGS), line
        assert all(0.0 <= float(v) <= 1.5 for v in rates.values()), line
    steps, utts = map(int, re.search(r"done: (\d+) steps, (\d+) utterances", log).groups())
    assert steps >= 1 and utts >= 4

    new = load_file(str(out / "projector.safetensors"))
    old = load_file(str(SHIPPED / "projector" / "projector.safetensors"))
    assert set(new) == set(old)
    assert all(new[k].shape == old[k].shape and new[k].dtype == torch.float16 for k in old)
    assert any(not torch.equal(new[k], old[k]) for k in old), "training left the projector unchanged"

    # dropped into a copy of the model directory, the real loader serves it
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED, model_dir)
    shutil.copy(out / "projector.safetensors", model_dir / "projector" / "projector.safetensors")
    model = load_model(str(model_dir), "cpu")
    served = {k: v.to(torch.float16) for k, v in model.projector.state_dict().items()}
    assert all(torch.equal(served[k], new[k]) for k in new)
    utts = [demo_data.sample_utterance(demo_data.HELDOUT_SEED + i, "es", demo_data.HELDOUT) for i in range(6)]
    texts = [r.text for r in run_batch(model, [TranscribeRequest(u.audio, 1, "es", seed=0) for u in utts])]
    assert error_rate("es", [u.text for u in utts], texts) < 0.8, texts
