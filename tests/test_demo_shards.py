"""scripts/demo_shards.py: utterances stored as the frozen encoder's frames, as the engine will see them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import demo_data  # noqa: E402
from demo_model import demo_spec  # noqa: E402
from demo_shards import FramePool, write_shards  # noqa: E402

from server.engine import load_model  # noqa: E402
from server.engine.frames import encode, log_mel  # noqa: E402
from server.engine.loader import load_whisper_encoder  # noqa: E402
from server.engine.spec import WHISPER_FRAMES_PER_SECOND  # noqa: E402

WHISPER = ROOT / "server" / "models" / "demo" / "whisper"


def _utterances() -> list[demo_data.Utterance]:
    said = [("en", "seven"), ("fr", "bonjour à tous"), ("es", "muchas gracias por llamar")]
    return [demo_data.Utterance(lang, text, demo_data.synthesize("espeak", lang, text, 160, 50, 0), "espeak:" + lang)
            for lang, text in said]


def test_shards_hold_each_utterance_at_its_own_bucket_in_order_and_are_never_rewritten(tmp_path):
    utts = _utterances()
    write_shards(tmp_path, 41, utts, WHISPER, size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0041.jsonl", "0041.npy", "0042.jsonl", "0042.npy"]
    rows = [json.loads(line) for shard in ("0041", "0042") for line in open(tmp_path / f"{shard}.jsonl")]
    assert [(r["language"], r["text"]) for r in rows] == [(u.language, u.text) for u in utts]
    spec = demo_spec()
    frames = [spec.encoder_samples(u.audio.shape[0]) * WHISPER_FRAMES_PER_SECOND // demo_data.SAMPLE_RATE for u in utts]
    assert [r["frames"] for r in rows] == frames
    assert [r["start"] for r in rows] == [0, frames[0], 0]
    # the stored frames are the encoder's output at that bucket (stored in fp16, maybe encoded in bf16)
    extractor, whisper = load_whisper_encoder(WHISPER)
    with torch.inference_mode():
        expected = encode(whisper.float().eval(), log_mel(extractor, [utts[2].audio], spec.encoder_samples(
            utts[2].audio.shape[0]))).float().numpy()[0]
    stored = np.load(tmp_path / "0042.npy").astype(np.float32)
    cosine = (stored * expected).sum(-1) / np.linalg.norm(stored, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert stored.shape == expected.shape and cosine.min() > 0.99, cosine.min()

    before = (tmp_path / "0041.npy").stat().st_mtime_ns
    write_shards(tmp_path, 41, utts[::-1], WHISPER, size=2)  # a rerun keeps what it wrote
    assert (tmp_path / "0041.npy").stat().st_mtime_ns == before
    assert json.loads(open(tmp_path / "0041.jsonl").readline())["text"] == "seven"

    pool = FramePool(tmp_path, load_model("demo", "cpu").tokenizer)
    assert pool.poll() == 3 and pool.texts == [u.text for u in utts]
