"""Training data for the demo model: synthetic utterances stored ahead as log-mel feature shards.

How this works
--------------
espeak-ng synthesis plus Whisper feature extraction costs about as much CPU per utterance
as a training step, so :func:`make_shards` runs ahead (one process per core) and writes
shards of ``SHARD`` utterances: ``NNNN.npy`` (float16 log-mel, [size, 80, frames]) and
``NNNN.jsonl`` (text, language). :class:`ShardPool` samples uniformly from every shard
finished so far, picking new ones up when polled, and applies SpecAugment.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

import demo_data

__all__ = ["WINDOW_SECONDS", "SHARD", "make_shards", "char_ids", "ShardPool"]

WINDOW_SECONDS = 4.0  # the demo model's audio window; every shard holds windows of this length
SHARD = 2000  # utterances per feature shard


def make_shards(out: Path, first: int, count: int, seed: int, size: int = SHARD) -> None:
    """Synthesize shards ``first`` .. ``first+count-1`` of training utterances as log-mel features.

    Each shard holds ``size`` utterances (languages in turn): ``NNNN.npy`` (float16,
    [size, 80, frames]) and ``NNNN.jsonl`` (text, language). Written to a temporary
    name and renamed, so a trainer polling the directory never reads half a shard.
    """
    import json

    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=int(WINDOW_SECONDS))
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(first, first + count):
        if (out / f"{shard:04d}.npy").exists():
            continue
        feats, rows = [], []
        for i in range(size):
            lang = demo_data.LANGS[i % 6]
            utt = demo_data.sample_utterance(seed + shard * SHARD + i, lang)
            feats.append(fe([utt.audio], sampling_rate=16000, return_tensors="np", padding="max_length")
                         .input_features[0].astype(np.float16))
            rows.append({"text": utt.text, "language": lang})
        with open(out / f"{shard:04d}.jsonl.tmp", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        np.save(out / f"{shard:04d}.tmp.npy", np.stack(feats))
        (out / f"{shard:04d}.jsonl.tmp").replace(out / f"{shard:04d}.jsonl")
        (out / f"{shard:04d}.tmp.npy").replace(out / f"{shard:04d}.npy")
        print(f"shard {shard} written", flush=True)


def char_ids(tokenizer, text: str) -> list[int]:
    """``text`` as one token per character (space -> ``▁``), all from the same vocabulary.

    Why: CTC over whole-word subwords gives each of ~2500 classes a handful of frames per
    batch and sat on its blank plateau for thousands of steps; per-character targets
    share every letter across words, so the acoustic side learns from dense labels. The
    denoiser's canvas keeps the subword tokens.
    """
    vocab = tokenizer.get_vocab()
    unk = vocab["<unk>"]
    return [vocab.get("\u2581" if c == " " else c, unk) for c in unicodedata.normalize("NFC", text)]


class ShardPool:
    """Every finished shard under ``root``, sampled uniformly; new shards join when polled."""

    def __init__(self, root: Path, tokenizer) -> None:
        self.root, self.tokenizer = root, tokenizer
        self.feats: list[np.ndarray] = []
        self.rows: list[tuple[list[int], str, list[int]]] = []  # (subword ids, language, char ids)
        self.loaded: set[str] = set()

    def poll(self) -> int:
        import json

        for path in sorted(self.root.glob("[0-9][0-9][0-9][0-9].npy")):
            if path.stem in self.loaded or not path.with_suffix(".jsonl").exists():
                continue
            rows = [json.loads(line) for line in open(path.with_suffix(".jsonl"))]
            self.feats.extend(np.load(path, mmap_mode=None))
            self.rows.extend((self.tokenizer(r["text"], add_special_tokens=False).input_ids, r["language"],
                              char_ids(self.tokenizer, r["text"])) for r in rows)
            self.loaded.add(path.stem)
        return len(self.rows)

    def batch(self, rng: np.random.Generator, size: int, spec_augment: float):
        picks = rng.integers(0, len(self.rows), size)
        feats = torch.from_numpy(np.stack([self.feats[i] for i in picks]).astype(np.float32))
        if spec_augment:
            for row in feats:  # SpecAugment: two frequency and two time masks, plus a gain shift
                if rng.random() < spec_augment:
                    for _ in range(2):
                        f0, fw = rng.integers(0, 70), rng.integers(0, 10)
                        row[f0: f0 + fw] = row.mean()
                        t0, tw = rng.integers(0, row.shape[1] - 20), rng.integers(0, 20)
                        row[:, t0: t0 + tw] = row.mean()
                    row += float(rng.uniform(-0.3, 0.3))
        targets = [self.rows[i][0] for i in picks]
        return feats, targets, [self.rows[i][1] for i in picks], [self.rows[i][2] for i in picks]
