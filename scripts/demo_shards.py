"""Training data for the demo model: synthetic utterances stored ahead as frozen-encoder frames.

How this works
--------------
The whisper encoder is frozen, so its output for an utterance never changes: it is
computed once, when the utterance is synthesized, exactly as the engine computes it at
inference (:mod:`server.engine.frames`: the audio's own length rounded up to the model's
bucket). :func:`make_shards` writes shards of ``SHARD`` utterances (languages in turn):
``NNNN.npy`` (float16 frames of every utterance, concatenated, [total frames, 512]) and
``NNNN.jsonl`` (text, language, voice, first frame, frame count). Written under a
temporary name and renamed, so a trainer polling the directory never reads half a shard.

:class:`FramePool` holds every finished shard, groups utterances by bucket, and serves
batches of one bucket (so each batch has the shapes inference sees) whose size keeps the
frames per batch roughly constant, with time masks and a little noise on the frames (and,
where asked, per-utterance channel jitter and channel masks).
"""

from __future__ import annotations

import json
from pathlib import Path

import demo_data
import numpy as np
import torch
from demo_model import demo_spec

from server.engine.frames import encode, log_mel, native_bf16
from server.engine.spec import WHISPER_FRAMES_PER_SECOND

__all__ = ["SHARD", "make_shards", "write_shards", "FramePool"]

SHARD = 1000  # utterances per shard
_SEED_STRIDE = 10_000_000
# FramePool.batch(channels=): per-utterance channel gain (1 + this x N(0, 1)) and shift (this x N(0, 1) x the
# channel's std). Between utterances of the development set the channel means move by 0.16 of a
# channel's std (median) and its std by 0.10, so these draw as much again
CHANNEL_GAIN, CHANNEL_SHIFT = 0.1, 0.2
CHANNEL_MASK = 48  # widest band of encoder channels zeroed there (of 512)


def make_shards(out: Path, first: int, count: int, whisper_dir: Path, seed: int = 0, size: int = SHARD,
                split: demo_data.Split = demo_data.TRAIN) -> None:
    """Synthesize shards ``first`` .. ``first+count-1`` of training utterances (of ``split``) as encoder frames."""
    for shard in range(first, first + count):
        if not (out / f"{shard:04d}.npy").exists():
            utts = [demo_data.sample_utterance(seed * _SEED_STRIDE + shard * size + i, demo_data.LANGS[i % 6], split)
                    for i in range(size)]
            write_shards(out, shard, utts, whisper_dir, size)


def write_shards(out: Path, first: int, utts: list[demo_data.Utterance], whisper_dir: Path,
                 size: int = SHARD) -> None:
    """``utts`` as encoder frames, in shards of ``size`` numbered from ``first`` (written ones kept)."""
    from server.engine.loader import load_whisper_encoder

    spec = demo_spec()
    extractor, whisper = load_whisper_encoder(Path(whisper_dir))
    whisper = whisper.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    bf16 = native_bf16()
    for shard, i0 in enumerate(range(0, len(utts), size), first):
        if (out / f"{shard:04d}.npy").exists():
            continue
        part_utts = utts[i0: i0 + size]
        by_bucket: dict[int, list[int]] = {}
        for i, u in enumerate(part_utts):
            by_bucket.setdefault(spec.encoder_samples(u.audio.shape[0]), []).append(i)
        frames: list[np.ndarray | None] = [None] * len(part_utts)
        with torch.inference_mode():
            for samples, members in by_bucket.items():
                for j in range(0, len(members), 16):
                    part = members[j: j + 16]
                    feats = log_mel(extractor, [part_utts[i].audio for i in part], samples)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # frames differ ~1e-3
                        encoded = encode(whisper, feats).float().numpy()
                    for i, row in zip(part, encoded):
                        frames[i] = row.astype(np.float16)
        rows, start = [], 0
        for u, f in zip(part_utts, frames):
            rows.append({"text": u.text, "language": u.language, "voice": u.voice, "start": start, "frames": len(f)})
            start += len(f)
        with open(out / f"{shard:04d}.jsonl.tmp", "w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        np.save(out / f"{shard:04d}.tmp.npy", np.concatenate(frames))
        (out / f"{shard:04d}.jsonl.tmp").replace(out / f"{shard:04d}.jsonl")
        (out / f"{shard:04d}.tmp.npy").replace(out / f"{shard:04d}.npy")
        print(f"shard {shard} written ({start / WHISPER_FRAMES_PER_SECOND / 3600:.2f} h of audio)", flush=True)


class FramePool:
    """Every finished shard under ``root``; batches of one bucket; new shards join when polled."""

    def __init__(self, root: Path, tokenizer, frames_per_batch: int = 12_000) -> None:
        self.root, self.tokenizer, self.frames_per_batch = root, tokenizer, frames_per_batch
        self.arrays: list[np.ndarray] = []
        self.rows: list[tuple[int, int, int, list[int], str]] = []  # (array, start, frames, token ids, language)
        self.texts: list[str] = []  # each row's transcript
        self.last_picks: np.ndarray | None = None  # the rows the last batch drew
        self.buckets: dict[int, list[int]] = {}
        self.loaded: set[str] = set()

    def poll(self) -> int:
        for path in sorted(self.root.glob("[0-9][0-9][0-9][0-9].npy")):
            if path.stem in self.loaded or not path.with_suffix(".jsonl").exists():
                continue
            self.arrays.append(np.load(path))
            for line in open(path.with_suffix(".jsonl"), encoding="utf-8"):
                r = json.loads(line)
                ids = self.tokenizer(r["text"], add_special_tokens=False).input_ids
                self.buckets.setdefault(r["frames"], []).append(len(self.rows))
                self.rows.append((len(self.arrays) - 1, r["start"], r["frames"], ids, r["language"]))
                self.texts.append(r["text"])
            self.loaded.add(path.stem)
        return len(self.rows)

    def batch(self, rng: np.random.Generator, augment: float = 0.5, channels: float = 0.0):
        """(frames [B, T, 512] float32, token ids per row, languages) from one bucket.

        ``channels``: the share of rows whose channels are also perturbed, as a voice or a
        microphone the training voices never had would move them: every channel scaled and
        shifted by its own constant for the whole utterance, and one or two bands of up to
        ``CHANNEL_MASK`` channels zeroed (SpecAugment's frequency masks, on the encoder's
        features). Held-out voices are what the model misses; these are cheap to draw."""
        sizes = np.array([len(self.buckets[b]) for b in sorted(self.buckets)], dtype=np.float64)
        bucket = sorted(self.buckets)[rng.choice(len(sizes), p=sizes / sizes.sum())]
        count = max(2, min(64, self.frames_per_batch // bucket))
        picks = self.last_picks = rng.choice(self.buckets[bucket], size=count)
        frames = np.stack([self.arrays[a][s: s + n] for a, s, n, _, _ in (self.rows[i] for i in picks)])
        frames = torch.from_numpy(frames.astype(np.float32))
        if augment:
            for row in frames:  # time masks and noise on the frozen encoder's frames
                if rng.random() < augment:
                    for _ in range(int(rng.integers(1, 3))):
                        t0, tw = int(rng.integers(0, bucket)), int(rng.integers(1, 8))
                        row[t0: t0 + tw] = 0.0
                    row += torch.from_numpy(rng.standard_normal(row.shape).astype(np.float32)) * 0.05 * row.std()
        if channels:  # after the time masks, so a run without channels draws what it drew before
            for row in frames:
                if rng.random() < channels:
                    std = row.std(0, keepdim=True)
                    gain = 1.0 + CHANNEL_GAIN * rng.standard_normal(row.shape[1]).astype(np.float32)
                    shift = CHANNEL_SHIFT * rng.standard_normal(row.shape[1]).astype(np.float32)
                    row.mul_(torch.from_numpy(gain)).add_(torch.from_numpy(shift) * std)
                    for _ in range(int(rng.integers(1, 3))):
                        c0, cw = int(rng.integers(0, row.shape[1])), int(rng.integers(1, CHANNEL_MASK + 1))
                        row[:, c0: c0 + cw] = 0.0
        return frames, [self.rows[i][3] for i in picks], [self.rows[i][4] for i in picks]

