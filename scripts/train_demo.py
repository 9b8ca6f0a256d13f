#!/usr/bin/env python
"""Train the embedded ``demo`` model on synthetic espeak-ng speech (CPU or CUDA).

How this works
--------------
The model is the production architecture at small sizes (:func:`demo_model.build_demo`):
a WhisperEncoder, the AudioProjector, a DiffusionGemmaForBlockDiffusion and a subword
tokenizer trained on the generator's transcripts (:func:`demo_model.build_tokenizer`).

Data is synthesized ahead into feature shards (``--make-shards``, one process per core;
:mod:`demo_data` speech, augmented, as 4 s log-mel windows), because espeak-ng and the
feature extractor cost as much CPU as a training step. The trainer samples uniformly
from every shard finished so far (new ones join as they land), adds SpecAugment, and
minimises

* CTC on the projector outputs read through the tied lm_head (blank = pad id 0), alone
  at first (``--ctc-first``), which makes the audio embeddings transcript-predictive. Its
  targets are one id per character (``--ctc-units chars``, stage 1: dense labels, the
  acoustic side learns fastest) or the canvas's own subword ids (``tokens``, stage 2,
  started ``--init-from`` stage 1), which makes the greedy CTC reading a canvas;
* then also uniform-diffusion denoising: a random fraction t ~ U(0, 1) of the target
  canvas (text, end-of-sequence, padding) is replaced by uniformly random ids and the
  decoder, reading the prompt KV cache built by
  :func:`server.engine.denoise.encode_prompts`, predicts the originals (cross-entropy
  over the whole canvas); with probability 0.5 a no-grad pass first supplies
  ``self_conditioning_logits``. A ``--seeded`` fraction of rows instead starts from the
  model's own greedy CTC canvas (:func:`server.engine.denoise.ctc_collapse`) with a
  little noise: where inference starts, since the demo declares ``canvas_start="ctc"``.

Resumable: ``--state`` (and the tokenizer beside it) is written every ``--save-every``
seconds and on SIGINT/SIGTERM; rerunning the same command continues. The learning rate
follows the wall-clock budget (``--minutes``), so a run ends on time on any machine::

    python scripts/train_demo.py --data runs/demo/shards --make-shards 0 8 &
    python scripts/train_demo.py --data runs/demo/shards --make-shards 8 8 &
    wait
    python scripts/train_demo.py --data runs/demo/shards --state runs/demo/stage1.pt \\
        --out runs/demo/stage1 --minutes 90 --threads 2 --ctc-units chars --ctc-first 1e-9 --joint-by 2
    python scripts/train_demo.py --data runs/demo/shards --state runs/demo/state.pt \\
        --out runs/demo/model --init-from runs/demo/stage1.pt --minutes 110 --threads 2
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
from demo_shards import SHARD, ShardPool, make_shards  # noqa: E402

from server.engine.denoise import ctc_collapse, encode_prompts  # noqa: E402
from server.engine.model import AsrModel  # noqa: E402

PARTS = ("whisper", "projector", "backbone")  # the trained modules, as saved in a state file

# ---- losses ----------------------------------------------------------------


def losses(model: AsrModel, features, targets, languages, chars, rng: torch.Generator, auto_prob: float = 0.3,
           diffusion_on: bool = True, ctc_units: str = "tokens", seeded: float = 0.5):
    bb = model.backbone
    device = model.device
    batch = features.shape[0]
    frames = model.whisper(features.to(device)).last_hidden_state
    embeds = model.projector(frames)
    # CTC through the tied lm_head
    ctc_logp = F.log_softmax(bb.lm_head(embeds).float(), dim=-1).transpose(0, 1)
    units = chars if ctc_units == "chars" else targets
    flat = torch.tensor([t for row in units for t in row], dtype=torch.long, device=device)
    lengths = torch.tensor([len(row) for row in units], dtype=torch.long, device=device)
    ctc = F.ctc_loss(ctc_logp, flat, torch.full((batch,), embeds.shape[1], dtype=torch.long, device=device), lengths,
                     blank=0, zero_infinity=True)
    if not diffusion_on:
        return torch.zeros((), device=device), ctc
    # prompt KV cache, with gradients
    langs = [None if torch.rand(1, generator=rng).item() < auto_prob else lang for lang in languages]
    prompts = torch.tensor([model.prompt_ids(lang) for lang in langs], device=device)
    cache = encode_prompts(model, prompts, embeds)
    # uniform-diffusion canvas
    length, vocab = bb.config.canvas_length, bb.config.text_config.vocab_size
    target = torch.zeros((batch, length), dtype=torch.long)
    for i, row in enumerate(targets):
        target[i, : len(row)] = torch.tensor(row)
        target[i, len(row)] = model.eos_token_id
    target = target.to(device)
    t = torch.rand((batch, 1), generator=rng).to(device)
    noise = torch.randint(0, vocab, (batch, length), generator=rng).to(device)
    start = target
    if seeded and ctc_units == "tokens":
        # Rows that start where inference starts (canvas_start="ctc"): the model's own
        # greedy CTC reading, with its real substitutions, insertions and deletions, plus
        # a little uniform noise; the rest follow the recipe from the clean target.
        own = ctc_collapse(model, ctc_logp.detach().argmax(-1).transpose(0, 1))
        pick = (torch.rand((batch, 1), generator=rng) < seeded).to(device)
        start = torch.where(pick, own, target)
        t = torch.where(pick, t * 0.3, t)
    replace = torch.rand((batch, length), generator=rng).to(device) < t
    canvas = torch.where(replace, noise, start)
    positions = torch.arange(prompts.shape[1], prompts.shape[1] + length, dtype=torch.int32, device=device)[None]
    mask = bb.model.decoder.create_diffusion_decoder_attention_mask(
        config=bb.config, inputs_embeds=canvas.unsqueeze(-1), past_key_values=cache,
        decoder_attention_mask=torch.ones((batch, prompts.shape[1] + length), dtype=torch.bool, device=device),
    )
    kwargs = dict(decoder_input_ids=canvas, decoder_attention_mask=mask, past_key_values=cache,
                  decoder_position_ids=positions)
    sc_logits = sc_mask = None
    if torch.rand(1, generator=rng).item() < 0.5:
        with torch.no_grad():
            sc_logits = bb(**kwargs).logits.detach()
        sc_mask = torch.ones(batch, dtype=torch.bool, device=device)
    logits = bb(**kwargs, self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask).logits
    diffusion = F.cross_entropy(logits.float().reshape(-1, vocab), target.reshape(-1))
    return diffusion, ctc


# ---- evaluation ------------------------------------------------------------


def quick_eval(model: AsrModel, utts, steps: int = 8) -> tuple[float, float]:
    """(denoise CER, CTC-greedy CER) on a few held-out utterances; spaces ignored."""
    import jiwer

    from server.engine.denoise import run_batch
    from server.engine.types import TranscribeRequest

    model.whisper.eval(), model.projector.eval(), model.backbone.eval()
    reqs = [TranscribeRequest(audio=u.audio, language=u.language, steps=steps, seed=0) for u in utts]
    hyps = [r.text for r in run_batch(model, reqs)]
    with torch.inference_mode():
        feats = model.feature_extractor([u.audio for u in utts], sampling_rate=16000, return_tensors="pt",
                                        padding="max_length").input_features.to(model.device)
        ids = model.backbone.lm_head(model.projector(model.whisper(feats).last_hidden_state)).argmax(-1)
    greedy = []
    for row in ids.tolist():
        out = [a for j, a in enumerate(row) if a != 0 and (j == 0 or a != row[j - 1])]
        greedy.append(model.tokenizer.decode(out, skip_special_tokens=True))
    refs = [u.text.replace(" ", "") for u in utts]
    model.whisper.train(), model.projector.train(), model.backbone.train()
    strip = lambda xs: [x.replace(" ", "") or "-" for x in xs]  # noqa: E731
    return jiwer.cer(refs, strip(hyps)), jiwer.cer(refs, strip(greedy))


# ---- loop ------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/demo/shards"), help="feature shards directory")
    parser.add_argument("--state", type=Path, default=Path("runs/demo/state.pt"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo/model"))
    parser.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget (sets the lr schedule)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ctc-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=240.0, help="seconds between checkpoints")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between quick evals")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--shard-size", type=int, default=SHARD, help="utterances per shard")
    parser.add_argument("--ctc-first", type=float, default=2.0,
                        help="train CTC alone until its smoothed loss falls below this (0 = joint from the start)")
    parser.add_argument("--joint-by", type=float, default=0.35, help="switch denoising on by this budget fraction")
    parser.add_argument("--spec-augment", type=float, default=0.5, help="probability of SpecAugment per utterance")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = budget only)")
    parser.add_argument("--ctc-units", choices=("chars", "tokens"), default="tokens",
                        help="CTC targets: one id per character, or the canvas's own subword ids")
    parser.add_argument("--seeded", type=float, default=0.5,
                        help="fraction of denoising rows that start from the model's own CTC reading")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (weights stay fp32): 1.3-1.5x faster steps on a CPU with AVX512-BF16")
    parser.add_argument("--init-from", type=Path, metavar="STATE_OR_MODEL",
                        help="start from the weights of another run's state file or of a saved model "
                             "directory, whose tokenizer it then uses (new optimizer and schedule)")
    parser.add_argument("--make-shards", type=int, nargs=2, metavar=("FIRST", "COUNT"),
                        help="only synthesize feature shards FIRST..FIRST+COUNT-1 into --data, then exit")
    parser.add_argument("--export", metavar="MODEL_DIR", help="only re-save MODEL_DIR in fp16 to --out, then exit")
    parser.add_argument("--draft-steps", type=int, default=2, help="with --export: the spec's draft steps")
    parser.add_argument("--final-steps", type=int, default=8, help="with --export: the spec's final steps")
    args = parser.parse_args()
    if args.export:
        export(args.export, args.out, args.draft_steps, args.final_steps)
        return
    if args.make_shards:
        make_shards(args.data, *args.make_shards, seed=args.seed * 10_000_000, size=args.shard_size)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 weights, TF32 matmuls
    torch.manual_seed(args.seed)
    tok_dir = args.state.parent / "tokenizer"
    if args.init_from and args.init_from.is_dir() and not tok_dir.exists():  # a model directory brings its own
        import shutil

        shutil.copytree(args.init_from / "tokenizer", tok_dir)
    if tok_dir.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(tok_dir)
    model = build_demo(args.seed, tokenizer=tokenizer).to(device, torch.float32)
    params = list({id(p): p for name in PARTS for p in getattr(model, name).parameters()}.values())
    print(f"params: {sum(p.numel() for p in params) / 1e6:.2f}M, device {device}", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    step, elapsed, best, joint = 0, 0.0, float("inf"), not args.ctc_first
    if args.init_from and not args.state.exists():
        if args.init_from.is_dir():  # a saved model (fp16 export included): weights only
            from server.engine.loader import load_model

            source = load_model(str(args.init_from), "cpu")
            state = {name: getattr(source, name).state_dict() for name in PARTS}
            state["step"] = "model directory"
        else:
            state = torch.load(args.init_from, map_location=device, weights_only=False)
        for name in PARTS:
            getattr(model, name).load_state_dict(state[name])
        print(f"initialised from {args.init_from} (step {state['step']})", flush=True)
    if args.state.exists():
        state = torch.load(args.state, map_location=device, weights_only=False)
        for name in PARTS:
            getattr(model, name).load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        step, elapsed, best, joint = state["step"], state["elapsed"], state["best"], state["joint"]
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    model.whisper.train(), model.projector.train(), model.backbone.train()

    def save() -> None:
        state = {name: getattr(model, name).state_dict() for name in PARTS}
        state.update(opt=opt.state_dict(), step=step, elapsed=elapsed, best=best, joint=joint)
        torch.save(state, str(args.state) + ".tmp")
        Path(str(args.state) + ".tmp").replace(args.state)

    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    evals = [demo_data.sample_utterance(900_000 + i, lang, demo_data.HELDOUT) for lang in demo_data.LANGS for i in range(2)]
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = ShardPool(args.data, tokenizer)
    while pool.poll() == 0:
        print("waiting for the first shard ...", flush=True)
        time.sleep(20)
    rng = torch.Generator().manual_seed(args.seed * 7919 + step)
    data_rng = np.random.default_rng([args.seed, step])
    budget = args.minutes * 60
    last_save = t_start = time.time()
    base = elapsed
    smooth = None
    while True:
        if step % 200 == 0:  # shards still being synthesized join as they land
            pool.poll()
        elapsed = base + time.time() - t_start
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * min(1.0, (step + 1) / 300) * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        features, targets, languages, chars = pool.batch(data_rng, args.batch, args.spec_augment)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            diffusion, ctc = losses(model, features, targets, languages, chars, rng, diffusion_on=joint,
                                    ctc_units=args.ctc_units, seeded=args.seeded)
        loss = diffusion + args.ctc_weight * ctc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        values = np.array([diffusion.item(), ctc.item()])
        smooth = values if smooth is None else 0.95 * smooth + 0.05 * values
        if not joint and (smooth[1] < args.ctc_first or frac >= args.joint_by):
            joint = True
            print(f"step {step}: CTC loss {smooth[1]:.2f}, denoising loss on", flush=True)
        if step % 20 == 0:
            print(f"step {step} {elapsed / 60:.1f}min lr {lr:.2e} diff {smooth[0]:.3f} ctc {smooth[1]:.3f} "
                  f"utts {len(pool.rows)}", flush=True)
        if step % args.eval_every == 0:
            cer, ctc_cer = quick_eval(model, evals)
            print(f"eval step {step}: denoise CER {cer:.3f}  ctc-greedy CER {ctc_cer:.3f}", flush=True)
            if joint and cer <= best:
                best = cer
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
