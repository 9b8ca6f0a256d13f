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


def test_channel_perturbation_moves_each_utterance_by_its_own_constants_and_leaves_runs_without_it_unchanged(tmp_path):
    utts = _utterances()
    write_shards(tmp_path, 0, utts, WHISPER, size=3)
    pool = FramePool(tmp_path, load_model("demo", "cpu").tokenizer)
    pool.poll()
    plain, _, _ = pool.batch(np.random.default_rng(7), augment=0.0)
    again, _, _ = pool.batch(np.random.default_rng(7), augment=0.0, channels=0.0)
    assert torch.equal(plain, again)  # without channels: the same draws as before this option
    moved, _, _ = pool.batch(np.random.default_rng(7), augment=0.0, channels=1.0)
    assert moved.shape == plain.shape and len(plain) >= 2
    gains = []
    for before, after in zip(plain, moved):
        zeroed = (after == 0).all(0)
        assert 1 <= int(zeroed.sum()) <= 2 * 48  # one or two bands of channels masked for the whole utterance
        b, a = before[:, ~zeroed], after[:, ~zeroed]
        b, a = b - b.mean(0), a - a.mean(0)
        gain = (a * b).sum(0) / (b * b).sum(0)  # elsewhere each channel is an affine map of itself
        assert float((a - gain * b).abs().max()) < 1e-3 * float(a.abs().max())
        assert 0.02 < float((gain - 1).abs().mean()) < 0.3
        gains.append(torch.full((plain.shape[-1],), float("nan")).index_put_((torch.where(~zeroed)[0],), gain))
    both = ~(gains[0].isnan() | gains[1].isnan())  # the channels neither row masked
    assert not torch.allclose(gains[0][both], gains[1][both])  # each row draws its own constants
