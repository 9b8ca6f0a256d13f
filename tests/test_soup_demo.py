"""scripts/soup_demo.py: the weight average of two demo models is a model the real loader serves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from server.engine import load_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "server" / "models" / "demo"
PROJECTOR = "projector/projector.safetensors"


def _soup(old: Path, new: Path, out: Path, weight: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "soup_demo.py"), str(old), str(new),
                           "--weight", weight, "--out", str(out)], capture_output=True, text=True, timeout=120)


def test_the_soup_is_the_weighted_average_and_loads(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)
    shipped = load_file(SHIPPED / PROJECTOR)
    shifted = {k: (v.float() + 0.25).to(v.dtype) for k, v in shipped.items()}
    save_file(shifted, other / PROJECTOR, metadata={"format": "pt"})

    run = _soup(SHIPPED, other, tmp_path / "soup", "0.4")
    assert run.returncode == 0, run.stderr[-2000:]
    mixed = load_file(tmp_path / "soup" / PROJECTOR)
    assert mixed.keys() == shipped.keys()
    for k, v in mixed.items():
        expected = 0.6 * shipped[k].float() + 0.4 * shifted[k].float()
        assert v.dtype == shipped[k].dtype
        assert torch.allclose(v.float(), expected, atol=2e-3), k
    # the untouched parts come along, and the loader serves exactly these weights
    model = load_model(str(tmp_path / "soup"), "cpu")
    served = model.projector.state_dict()
    assert all(torch.equal(served[k].to(v.dtype), v) for k, v in mixed.items())
    assert model.lexicon is not None and model.spec.name == "demo"


def test_models_of_different_shapes_are_refused_with_the_part_named(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)
    shipped = load_file(SHIPPED / PROJECTOR)
    key = next(iter(shipped))
    save_file(shipped | {key: torch.zeros(3, dtype=shipped[key].dtype)}, other / PROJECTOR, metadata={"format": "pt"})
    run = _soup(SHIPPED, other, tmp_path / "soup", "0.5")
    assert run.returncode != 0
    assert "projector/projector.safetensors" in run.stderr and "architecture" in run.stderr
