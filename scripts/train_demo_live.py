#!/usr/bin/env python
"""Synthesize and train at once: the demo projector's CTC reading, on a machine with many cores and a GPU.

How this works
--------------
On the 2-core development machine synthesis is what limits the demo model (each
utterance costs ~85 ms of a core, and spelling generalizes from more words, not from
more passes over the same ones), so :mod:`train_demo` trains from frame shards made
ahead. On a machine with many cores and a GPU (the lent H200 has 16 cores) this script
does both at once:

* ``--workers`` processes draw training utterances (:func:`demo_data.sample_utterance`,
  the wide split, espeak-ng voices only: festival, flite and piper are not installed on
  such a machine) from seeds no shard uses (``--seed-base``);
* the main process encodes them as they arrive with the frozen whisper encoder on the
  device, exactly as the engine does (:mod:`server.engine.frames`: the same log-mel, the
  same 1 s buckets, bf16 autocast), keeps every utterance's frames in device memory, and
  trains the **projector** alone with CTC through the model's tied embeddings, which
  stay frozen: the decoder reads those embeddings, so a new projector drops into the
  model directory and the decoder still reads the canvas it writes;
* every ``--eval-every`` seconds it prints the greedy CTC character error per language on
  a development set (held-out voices and words, ``--dev-seed``, not the test seeds), and
  writes ``projector.safetensors`` (fp16, as exported) to ``--out``; the best by dev error
  also goes to ``best/``.

``--max-views`` bounds how often, on average, each utterance is trained on, so a fast
device waits for new speech instead of memorising the old. It runs on a CPU too (the
test runs it for a few seconds). Needs only the model directory's ``whisper/``,
``projector/``, ``tokenizer/`` and ``dgasr.json``, plus the embeddings (``--embeddings``:
``--write-embeddings`` extracts them), so that it can travel to a machine without the rest::

    python scripts/train_demo_live.py --write-embeddings server/models/demo --out runs/embed.safetensors
    python scripts/train_demo_live.py --model server/models/demo --embeddings runs/embed.safetensors \\
        --workers 15 --minutes 8 --out runs/live
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
# Import the engine's modules without the package's __init__, which loads DiffusionGemma:
# this script needs only the encoder, the log-mel and the projector, and runs on machines
# whose transformers predates DiffusionGemma.
if "server.engine" not in sys.modules:
    _pkg = types.ModuleType("server.engine")
    _pkg.__path__ = [str(ROOT / "server" / "engine")]
    sys.modules["server.engine"] = _pkg

import demo_data  # noqa: E402
import numpy as np  # noqa: E402

EMBED_KEY = "model.decoder.embed_tokens.weight"  # the backbone's tied input embeddings = lm_head


def _split(words: int) -> demo_data.Split:
    return dataclasses.replace(demo_data.TRAIN_FREQUENT, name="train-live", other_engines=False, words=words)


_SPLIT = _split(demo_data.WIDE_WORDS)  # main() sets --top-words before the workers fork


def _synth(job: tuple[int, str, str]) -> tuple[str, str, np.ndarray]:
    seed, language, kind = job
    split = demo_data.HELDOUT if kind == "dev" else _SPLIT
    u = demo_data.sample_utterance(seed, language, split)
    return u.language, u.text, u.audio


def _use_words(path: Path | None) -> None:
    """Serve wordfreq's lists from a file (machines without wordfreq); workers inherit it."""
    if path is None:
        return
    lists = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    demo_data._wordfreq_list = lambda language, top=demo_data.TOP_WORDS: lists[language][:top]  # noqa: SLF001


def write_words(out: Path) -> None:
    lists = {lang: demo_data._wordfreq_list(lang, demo_data.WIDE_WORDS) for lang in demo_data.LANGS}  # noqa: SLF001
    out.write_bytes(gzip.compress(json.dumps(lists, ensure_ascii=False).encode("utf-8")))
    print(f"wrote {out} ({', '.join(f'{k} {len(v)}' for k, v in lists.items())} words)")


class FrameStore:
    """Every encoded utterance's frames on the device, one growing tensor per bucket."""

    def __init__(self, device, dim: int) -> None:
        self.device, self.dim = device, dim
        self.frames: dict[int, object] = {}
        self.count: dict[int, int] = {}
        self.targets: dict[int, list[list[int]]] = {}

    def add(self, frames, targets: list[list[int]]) -> None:
        import torch

        t = frames.shape[1]
        n = self.count.get(t, 0)
        buf = self.frames.get(t)
        if buf is None or buf.shape[0] < n + frames.shape[0]:
            grown = torch.empty((max(256, 2 * (n + frames.shape[0])), t, self.dim), dtype=torch.float16,
                                device=self.device)
            if buf is not None:
                grown[:n] = buf[:n]
            self.frames[t] = buf = grown
        buf[n: n + frames.shape[0]] = frames.to(torch.float16)
        self.count[t] = n + frames.shape[0]
        self.targets.setdefault(t, []).extend(targets)

    def __len__(self) -> int:
        return sum(self.count.values())

    def batch(self, rng: np.random.Generator, frames_per_batch: int, max_rows: int, augment: float):
        import torch

        sizes = sorted(self.count)
        weights = np.array([self.count[t] for t in sizes], dtype=np.float64)
        t = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
        rows = max(2, min(max_rows, frames_per_batch // t))
        picks = rng.integers(0, self.count[t], rows)
        x = self.frames[t][torch.from_numpy(picks).to(self.device)].float()
        if augment:  # the same frame masks and noise as demo_shards.FramePool, on the device
            hit = torch.from_numpy(rng.random(rows) < augment).to(self.device)
            pos = torch.arange(t, device=self.device)[None]
            for _ in range(2):
                t0 = torch.from_numpy(rng.integers(0, t, rows)).to(self.device)[:, None]
                tw = torch.from_numpy(rng.integers(1, 8, rows)).to(self.device)[:, None]
                x[(hit[:, None] & (pos >= t0) & (pos < t0 + tw))] = 0.0
            std = x.std(dim=(1, 2), keepdim=True)
            x = x + hit[:, None, None] * torch.randn_like(x) * 0.05 * std
        return x, [self.targets[t][i] for i in picks]


def _greedy(logits, blank: int = 0) -> list[list[int]]:
    """Greedy CTC ids per row (server.engine.denoise.ctc_collapse, without the model and canvas)."""
    best = logits.argmax(-1).cpu().numpy()
    out = []
    for row in best:
        keep = row != blank
        keep[1:] &= row[1:] != row[:-1]
        out.append(row[keep].tolist())
    return out


def _cer(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference length); jiwer (and its rapidfuzz) are not on the GPU machine."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1], len(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "server" / "models" / "demo",
                        help="model directory: whisper/, projector/ (the starting weights), tokenizer/, dgasr.json")
    parser.add_argument("--embeddings", type=Path, help="the backbone's embeddings (default: read the backbone)")
    parser.add_argument("--words", type=Path, help="wordfreq's lists, from --write-words (machines without wordfreq)")
    parser.add_argument("--top-words", type=int, default=demo_data.WIDE_WORDS,
                        help=f"training words per language (wordfreq's most frequent; {demo_data.TOP_WORDS:,} "
                             "needs no wordfreq)")
    parser.add_argument("--out", type=Path, default=Path("runs/live"))
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget (sets the lr schedule)")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--frames-per-batch", type=int, default=48_000)
    parser.add_argument("--max-rows", type=int, default=256)
    parser.add_argument("--max-views", type=float, default=12.0, help="train on each utterance about this often")
    parser.add_argument("--augment", type=float, default=0.5)
    parser.add_argument("--seed-base", type=int, default=50_000_000, help="first training seed (shards use < 10^7)")
    parser.add_argument("--dev-seed", type=int, default=2_000_000)
    parser.add_argument("--dev-per-language", type=int, default=10)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds between dev evaluations and saves")
    parser.add_argument("--encode-batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write-words", type=Path, metavar="FILE", help="only write wordfreq's lists to FILE")
    parser.add_argument("--write-embeddings", type=Path, metavar="MODEL_DIR",
                        help="only write MODEL_DIR's backbone embeddings to --out")
    args = parser.parse_args()
    if args.write_words:
        write_words(args.write_words)
        return
    if args.write_embeddings:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(args.write_embeddings / "backbone" / "model.safetensors"), "pt") as f:
            save_file({EMBED_KEY: f.get_tensor(EMBED_KEY)}, str(args.out))
        print(f"wrote {args.out}")
        return
    _use_words(args.words)
    global _SPLIT
    _SPLIT = _split(args.top_words)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers: one core each
    # Workers fork before the main process touches the device.
    pool = mp.get_context("fork").Pool(args.workers)
    dev_jobs = [(args.dev_seed + i, lang, "dev") for lang in demo_data.LANGS for i in range(args.dev_per_language)]
    dev_async = pool.map_async(_synth, dev_jobs)
    jobs = ((args.seed_base + i, demo_data.LANGS[i % 6], "train") for i in range(10**7))
    arrivals: queue.Queue = queue.Queue(maxsize=1024)
    stop = threading.Event()

    def collect() -> None:
        for item in pool.imap_unordered(_synth, jobs, chunksize=2):
            while not stop.is_set():
                try:
                    arrivals.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    run(args, pool, dev_async, arrivals, stop, threading.Thread(target=collect, daemon=True))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args, pool, dev_async, arrivals, stop, collector) -> None:
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from server.engine.frames import encode, log_mel
    from server.engine.projector import AudioProjector
    from server.engine.spec import ModelSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.time()
    spec = ModelSpec.load(args.model)
    whisper_dir = args.model / spec.parts.get("whisper", "whisper")
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    # loader.load_whisper_encoder's few lines again: the loader module imports DiffusionGemma
    whisper = WhisperEncoder(WhisperConfig.from_pretrained(whisper_dir))
    whisper.load_state_dict({k.removeprefix("model.encoder.").removeprefix("encoder."): v
                             for k, v in load_file(str(whisper_dir / "model.safetensors")).items()})
    whisper = whisper.to(device, torch.float32).eval().requires_grad_(False)
    projector = AudioProjector(spec.projector)
    projector.load_state_dict({k: v.float() for k, v in
                               load_file(str(args.model / "projector" / "projector.safetensors")).items()})
    projector = projector.to(device).train()
    embed_file = args.embeddings or args.model / "backbone" / "model.safetensors"
    with safe_open(str(embed_file), "pt") as f:
        embed = f.get_tensor(EMBED_KEY).float().to(device)  # frozen: the decoder reads it too
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer" / "tokenizer.json"))
    ids = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    id_to_char = {i: tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())}
    amp = dict(device_type=device.type, dtype=torch.bfloat16)

    def frames_of(audios: list[np.ndarray], samples: int):
        feats = log_mel(extractor, audios, samples, device).to(device)
        with torch.inference_mode(), torch.autocast(**amp):
            return encode(whisper, feats).float()

    def logits_of(frames):
        return projector(frames) @ embed.T

    dev = dev_async.get()
    dev_buckets: dict[int, list[int]] = {}
    for i, (_, _, audio) in enumerate(dev):
        dev_buckets.setdefault(spec.encoder_samples(audio.shape[0]), []).append(i)
    dev_frames = {s: frames_of([dev[i][2] for i in members], s) for s, members in dev_buckets.items()}
    print(f"ready in {time.time() - t_start:.1f} s: {len(dev)} dev utterances, device {device}, "
          f"{args.workers} synthesis workers", flush=True)

    def evaluate() -> tuple[float, dict[str, float]]:
        projector.eval()
        errors: dict[str, list[int]] = {lang: [0, 0] for lang in demo_data.LANGS}
        with torch.inference_mode(), torch.autocast(**amp):
            for s, members in dev_buckets.items():
                for i, hyp in zip(members, _greedy(logits_of(dev_frames[s]).float())):
                    lang, text, _ = dev[i]
                    e, n = _cer(text, "".join(id_to_char[t] for t in hyp))
                    errors[lang][0] += e
                    errors[lang][1] += n
        projector.train()
        per = {lang: e / max(n, 1) for lang, (e, n) in errors.items()}
        return sum(per.values()) / len(per), per

    def save(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in projector.state_dict().items()}
        save_file(state, str(directory / "projector.safetensors"))

    best = float("inf")

    def checkpoint(label: str) -> None:
        """Dev error per language; the projector to --out, and to best/ when the error is the lowest yet."""
        nonlocal best
        mean, per = evaluate()
        if label != "start":
            save(args.out)
            if mean < best:
                save(args.out / "best")
        best = min(best, mean)
        print(f"eval {label}: dev CTC CER {mean:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in per.items()), flush=True)

    params = list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    store = FrameStore(device, spec.projector.in_dim)
    pending: dict[int, list[tuple[np.ndarray, list[int]]]] = {}
    rng = np.random.default_rng(args.seed_base)
    checkpoint("start")
    collector.start()
    budget = args.minutes * 60
    t_train = time.time()
    step = rows_trained = arrived = 0
    last_eval = time.time()
    smooth = None
    encode_s = train_s = 0.0
    while True:
        elapsed = time.time() - t_train
        done = elapsed >= budget
        for _ in range(4 * args.encode_batch):  # take what the workers have made; one encode at most
            try:
                _, text, audio = arrivals.get_nowait()
            except queue.Empty:
                break
            arrived += 1
            bucket = spec.encoder_samples(audio.shape[0])
            pending.setdefault(bucket, []).append((audio, ids(text)))
            if len(pending[bucket]) >= args.encode_batch:
                t0 = time.time()
                items = pending.pop(bucket)
                store.add(frames_of([a for a, _ in items], bucket), [t for _, t in items])
                encode_s += time.time() - t0
                break
        if done:
            break
        if not len(store) or rows_trained >= args.max_views * len(store):
            time.sleep(0.01)
            continue
        t0 = time.time()
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        x, targets = store.batch(rng, args.frames_per_batch, args.max_rows, args.augment)
        with torch.autocast(**amp):
            logits = logits_of(x)
        logp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        flat = torch.tensor([t for row in targets for t in row], dtype=torch.long, device=device)
        lengths = torch.tensor([len(row) for row in targets], dtype=torch.long, device=device)
        inputs = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=device)
        loss = F.ctc_loss(logp, flat, inputs, lengths, blank=0, zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        rows_trained += x.shape[0]
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        train_s += time.time() - t0
        if step % 100 == 0:
            print(f"step {step} {elapsed / 60:.2f}min lr {lr:.2e} ctc {smooth:.3f} utts {len(store)} "
                  f"(arrived {arrived}, {arrived / max(elapsed, 1e-9):.0f}/s) views {rows_trained / len(store):.1f} "
                  f"batch {x.shape[0]}x{x.shape[1]} encode {encode_s:.0f}s train {train_s:.0f}s", flush=True)
        if time.time() - last_eval >= args.eval_every:
            last_eval = time.time()
            checkpoint(f"step {step}")
    stop.set()
    pool.terminate()
    checkpoint(f"end step {step}")
    print(f"done: {step} steps, {len(store)} utterances ({arrived} synthesized), "
          f"{rows_trained / max(len(store), 1):.1f} views each, {(time.time() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
