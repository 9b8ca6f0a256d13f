"""scripts/tune_lexicon.py: the grid is decoded as served and the best weights land where the loader reads them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from server.engine import load_model
from server.engine.lexicon import LEXICON_DIR, WEIGHTS_FILE, LexiconWeights
from server.engine.tiny import build_tiny_random

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import tune_lexicon  # noqa: E402


def test_tuning_prints_one_row_per_setting_and_writes_the_best_per_language(tmp_path, monkeypatch, capsys):
    model = build_tiny_random(seed=0)
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, canvas_start="ctc", final_steps=1))
    folder = tmp_path / "model"
    model.save(folder)
    (folder / LEXICON_DIR).mkdir()
    (folder / LEXICON_DIR / "en.tsv").write_text("hello\t-2.0\nworld\t-2.5\nold\t-4.0\n")
    # German was tuned before; --languages en leaves its weights as they were
    (folder / LEXICON_DIR / "de.tsv").write_text("hallo\t-2.0\nwelt\t-2.5\n")
    (folder / LEXICON_DIR / WEIGHTS_FILE).write_text(json.dumps({"de": {"lm_weight": 1.2, "word_score": -1.0}}))
    data = tmp_path / "dev"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):  # tiny-random reads noise as noise: only the mechanism is under test here
        sf.write(data / f"en_{i}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        rows.append({"audio": f"en_{i}.wav", "language": "en", "text": "hello world", "voice": "noise"})
    (data / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", ["tune_lexicon.py", "--model", str(folder), "--data", str(data),
                                      "--lm-weights", "0.5,2", "--word-scores", "0,3", "--threads", "1", "--write",
                                      "--languages", "en"])
    tune_lexicon.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("lm_weight")]
    assert [line.split("|")[0].split() for line in table] == [
        ["lm_weight", a, "word_score", b] for a, b in (("0.50", "0.00"), ("0.50", "3.00"), ("2.00", "0.00"),
                                                         ("2.00", "3.00"))]
    written = json.loads((folder / LEXICON_DIR / WEIGHTS_FILE).read_text())
    assert list(written) == ["de", "en"] and written["de"] == {"lm_weight": 1.2, "word_score": -1.0, "context": 1.0}
    assert (written["en"]["lm_weight"], written["en"]["word_score"]) in {(0.5, 0.0), (0.5, 3.0), (2.0, 0.0), (2.0, 3.0)}
    assert f"best en: lm_weight {written['en']['lm_weight']:g} word_score {written['en']['word_score']:g}" in out
    assert load_model(str(folder), "cpu").lexicon.weights == {"en": LexiconWeights(**written["en"]),
                                                              "de": LexiconWeights(1.2, -1.0)}
