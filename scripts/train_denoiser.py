#!/usr/bin/env python
"""Train the demo model's denoiser on the canvases the engine really starts from.

How this works
--------------
A ``canvas_start="ctc"`` model starts each canvas from its reading of the audio: since the
phoneme head (``scripts/train_phones.py``) that reading is the lexicon search's, in
phonemes for English, German, French and Spanish (:func:`server.engine.denoise.ctc_canvases`).
The denoiser was trained on the older projector's greedy character readings, which spell
accented letters badly, so it learned not to trust them: one step turned the lexicon's
"manière" into "mani re" and "française" into "fran aise".

Here the whisper encoder and the projector (phoneme head included) are frozen and only the
denoiser learns (the backbone without its tied embeddings, which the character reading and
the word alignment read through): each step draws a batch of shard utterances
(:class:`demo_shards.FramePool`, the frozen encoder's frames, lightly masked and noised),
reads every row's start canvas with the engine's own ``ctc_canvases`` (the language's
lexicon search), and minimises :func:`train_demo.diffusion_loss`: a ``--seeded`` share of
the rows denoises that start canvas (a little noise added), the rest the target canvas
with a random fraction replaced, as before. Resumable (``--state``, written every
``--save-every`` seconds and on SIGINT/SIGTERM); the learning rate follows the wall-clock
budget (``--minutes``). ``--export OUT`` writes the model directory with the new denoiser::

    python scripts/train_denoiser.py --model server/models/demo --minutes 30 --threads 2 --bf16
    python scripts/train_denoiser.py --model server/models/demo --export runs/denoiser/export
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_shards import FramePool  # noqa: E402
from train_demo import diffusion_loss  # noqa: E402
from train_state import TrainState  # noqa: E402

from server.engine.denoise import ctc_canvases  # noqa: E402
from server.engine.frames import native_bf16, project  # noqa: E402
from server.engine.lexicon import LEXICON_DIR  # noqa: E402
from server.engine.loader import load_model  # noqa: E402


def trained_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The backbone's parameters but its token embeddings (tied to the lm_head the character
    reading goes through); everything else stays frozen."""
    frozen = {id(model.backbone.get_input_embeddings().weight), id(model.backbone.lm_head.weight)}
    out = {}
    for name, p in model.backbone.named_parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
        else:
            out[name] = p
    for p in [*model.projector.parameters(), *model.whisper.parameters()]:
        p.requires_grad_(False)
    return out


def start_canvases(model, frames: torch.Tensor, languages: list[str]):
    """(embeddings, start canvases) of a batch of encoder frames, read as the engine reads them
    (:func:`server.engine.frames.project`, under the model's ``audio_dtype``)."""
    with torch.no_grad():
        embeds, phone_logits = project(model, frames)
    return embeds, ctc_canvases(model, embeds, languages, phone_logits)


def train(args, model) -> None:
    params = trained_parameters(model)
    print(f"training {sum(p.numel() for p in params.values()) / 1e6:.2f}M denoiser parameters", flush=True)
    opt = torch.optim.AdamW(params.values(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    state = TrainState(args.state, "backbone", model.backbone, opt)
    state.resume()
    pool = FramePool(args.data, model.tokenizer, args.frames_per_batch)
    pool.poll()
    rng = torch.Generator().manual_seed(args.seed * 7919 + state.step)
    data_rng = np.random.default_rng([args.seed, state.step])
    bf16 = args.bf16 and native_bf16()
    model.projector.eval(), model.backbone.train()
    budget, started, last_save, shown = args.minutes * 60, time.time() - state.spent, time.time(), []
    while not state.stop and time.time() - started < budget:
        frac = (time.time() - started) / budget
        lr = args.lr * min(1.0, (state.step + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        frames, targets, languages = pool.batch(data_rng, args.augment)
        frames, targets, languages = frames[: args.rows], targets[: args.rows], languages[: args.rows]
        embeds, starts = start_canvases(model, frames, languages)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, embeds, targets, languages, starts, rng, args.seeded,
                                  start_noise=args.start_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        state.step += 1
        state.spent = time.time() - started
        shown.append(loss.item())
        if state.step % 20 == 0:
            print(f"step {state.step} diffusion {np.mean(shown):.4f} lr {lr:.2e} {state.spent / 60:.1f} min, "
                  f"{len(pool.rows)} utts, batch {frames.shape[0]}x{frames.shape[1]}", flush=True)
            shown.clear()
        if time.time() - last_save > args.save_every:
            state.save()
            last_save = time.time()
    state.save()
    print(f"saved step {state.step} to {args.state}", flush=True)


def export(args, model) -> None:
    """``--export OUT``: the model directory of ``--model`` with the trained denoiser (fp16)."""
    model.backbone.load_state_dict(torch.load(args.state, weights_only=False)["backbone"])
    out = args.export
    model.to(torch.device("cpu"), torch.float16).save(out)
    source = Path(args.model)
    shutil.copy(source / "whisper" / "LICENSE.whisper", out / "whisper" / "LICENSE.whisper")
    shutil.copytree(source / LEXICON_DIR, out / LEXICON_DIR, dirs_exist_ok=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {args.state} over {source} -> {out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="server/models/demo", help="model directory (its projector stays)")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/shards"))
    parser.add_argument("--state", type=Path, default=Path("runs/denoiser/state.pt"))
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (sets the lr schedule)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rows", type=int, default=16, help="utterances per step")
    parser.add_argument("--frames-per-batch", type=int, default=12_000)
    parser.add_argument("--seeded", type=float, default=0.7, help="rows that start from the engine's start canvas")
    parser.add_argument("--start-noise", type=float, default=0.1, help="at most this share of a start canvas noised")
    parser.add_argument("--augment", type=float, default=0.5, help="probability of frame masks and noise per row")
    parser.add_argument("--save-every", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast where the CPU has it natively")
    parser.add_argument("--export", type=Path, metavar="OUT", help="write the model directory with the trained denoiser")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model, "cpu")
    model.projector.float(), model.backbone.float()
    if args.export:
        export(args, model)
    else:
        train(args, model)


if __name__ == "__main__":
    main()
