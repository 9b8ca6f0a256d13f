#!/usr/bin/env python
"""Train a phoneme CTC head on the demo model's projector, and compare it with the character lexicon.

How this works
--------------
:mod:`demo_phones` says why phonemes. From a saved demo model directory (the shipped one by
default), the projector gains a phoneme head (``ProjectorConfig.phones``: a layer norm and a
linear over its hidden state, new) that learns espeak-ng's phonemes of each shard utterance
with CTC, while the projector goes on learning its character CTC too (so the embeddings the denoiser reads stay
what it was trained on). Resumable (``--state``, written every ``--save-every`` seconds and
on SIGINT/SIGTERM); the learning rate follows the wall-clock budget (``--minutes``).

``--eval DIR`` decodes a held-out set (``scripts/demo_data.py`` layout) and the human
English recordings both ways from one encoding of each utterance: through the model's own
lexicons (a character model's: the character search) and the phoneme CTC through the
pronouncing lexicons of ``--lexicons``, and prints WER/CER per language::

    python scripts/train_phones.py --lexicons runs/phones --minutes 40 --threads 2 --bf16
    python scripts/train_phones.py --lexicons runs/phones --eval runs/heldout --per-language 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_phones as dp  # noqa: E402
from demo_shards import FramePool  # noqa: E402
from train_state import TrainState  # noqa: E402
from server.engine.frames import native_bf16  # noqa: E402
from server.engine.wordlm import CONTEXT_SUFFIX  # noqa: E402


def phone_ids(index: dict[str, int], phones: tuple[str, ...]) -> list[int]:
    return [index[p] for p in phones if p in index]


def with_phone_head(model, phones: list[str], state: dict | None = None):
    """``model`` with a projector that has a phoneme head over ``phones``: the model's own
    projector weights and a new head, or ``state`` (a --state file's ``projector``)."""
    import dataclasses

    from server.engine.projector import AudioProjector

    config = dataclasses.replace(model.spec.projector, phones=len(phones))
    projector = AudioProjector(config)
    if state is None:
        missing = projector.load_state_dict(model.projector.state_dict(), strict=False).missing_keys
        assert all(k.startswith("phone_") for k in missing), missing
    else:
        projector.load_state_dict(state)
    return dataclasses.replace(model, spec=dataclasses.replace(model.spec, projector=config), projector=projector)


def train(args, model, phones: list[str]) -> None:
    index = {p: i for i, p in enumerate(phones)}
    phonemizer = dp.Phonemizer()
    pool = FramePool(args.data, model.tokenizer, args.frames_per_batch)
    pool.poll()
    targets: list[list[int]] = []

    def extend_targets() -> None:
        todo = list(zip([r[4] for r in pool.rows[len(targets):]], pool.texts[len(targets):]))
        targets.extend(phone_ids(index, p) for p in phonemizer.utterances(todo))

    extend_targets()
    head = [p for name, p in model.projector.named_parameters() if name.startswith("phone_")]
    params = [{"params": [p for name, p in model.projector.named_parameters() if not name.startswith("phone_")],
               "lr": args.lr}, {"params": head, "lr": args.head_lr}]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    state = TrainState(args.state, "projector", model.projector, opt, phones=phones)
    state.resume()
    step, spent = state.step, state.spent
    rng = np.random.default_rng(args.seed + step)
    bf16 = args.bf16 and native_bf16()
    model.projector.train()
    budget, started, last_save, shown = args.minutes * 60, time.time() - spent, time.time(), []
    while not state.stop and time.time() - started < budget:
        if step % 200 == 0 and pool.poll() > len(targets):
            extend_targets()
        frac = (time.time() - started) / budget
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * frac))
        for group, base in zip(opt.param_groups, (args.lr, args.head_lr)):
            group["lr"] = base * scale
        frames, chars, _ = pool.batch(rng, channels=args.channel_augment)
        rows = [targets[i] for i in pool.last_picks]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            embeds, phone_logits = model.projector.read(frames)
            phone_logp = F.log_softmax(phone_logits.float(), -1).transpose(0, 1)
            char_logp = F.log_softmax(model.backbone.lm_head(embeds).float(), -1).transpose(0, 1)
        n = torch.full((frames.shape[0],), phone_logp.shape[0], dtype=torch.long)
        phone_loss = F.ctc_loss(phone_logp, torch.tensor([t for r in rows for t in r]), n,
                                torch.tensor([len(r) for r in rows]), blank=0, zero_infinity=True)
        char_loss = F.ctc_loss(char_logp, torch.tensor([t for r in chars for t in r]), n,
                               torch.tensor([len(r) for r in chars]), blank=0, zero_infinity=True)
        loss = phone_loss + args.char_weight * char_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.projector.parameters(), 1.0)
        opt.step()
        step += 1
        shown.append((phone_loss.item(), char_loss.item()))
        if step % 25 == 0:
            p, c = np.mean(shown, axis=0)
            shown.clear()
            print(f"step {step} phone ctc {p:.3f} char ctc {c:.3f} lr {scale * args.lr:.2e} "
                  f"{(time.time() - started) / 60:.1f} min, {len(targets)} utts", flush=True)
        state.step, state.spent = step, time.time() - started
        if time.time() - last_save > args.save_every:
            state.save()
            last_save = time.time()
    state.save()
    print(f"saved step {step} to {args.state}", flush=True)


def evaluate(args, model, phones: list[str]) -> None:
    from eval_wer import load_heldout, load_human
    from scoring import error_rate

    from server.engine.denoise import ctc_canvases
    from server.engine.frames import read_audio
    from server.engine.lexicon import LexiconDecoding, LexiconWeights, lexicon_files

    files = lexicon_files(args.lexicons / "lexicon")
    lexicon = LexiconDecoding(model.tokenizer, model.backbone.config.text_config.pad_token_id, files, phones=phones,
                              weights={lang: LexiconWeights(*w) for lang, w in _weights(args.weights)})
    rows = [r for r in load_heldout(args.eval) if int(r["audio"].split("_")[1][:3]) < args.per_language]
    rows += load_human() if not args.no_human else []
    model.projector.eval()
    chars_out, phones_out, greedy_phones = [], [], []
    with torch.inference_mode():
        for r in rows:
            embeds, phone_logits = read_audio(model, [r["wav"]])
            chars_out.append(model.decode(ctc_canvases(model, embeds, [r["language"]], phone_logits)[0].tolist()))
            logp = F.log_softmax(phone_logits.float(), -1)[0].numpy()
            ids = lexicon.decode(None, r["language"], logp)
            phones_out.append(model.tokenizer.decode(ids or []))
            best = logp.argmax(-1)
            greedy_phones.append(" ".join(phones[i] for j, i in enumerate(best) if i and (j == 0 or best[j - 1] != i)))
    print(f"| set | the model's lexicons | phone lexicon |  ({args.eval}, {args.state})")
    for name in dict.fromkeys(r["set"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["set"] == name]
        refs = [rows[i]["text"] for i in idx]
        a = error_rate(name, refs, [chars_out[i] for i in idx])
        b = error_rate(name, refs, [phones_out[i] for i in idx])
        print(f"| {name} | {100 * a:.1f} | {100 * b:.1f} |", flush=True)
    if args.show:
        for r, c, p, g in list(zip(rows, chars_out, phones_out, greedy_phones))[:: max(1, len(rows) // args.show)]:
            print(f"{r['set']}: {r['text']}\n  chars: {c}\n  phones: {p}\n  greedy: {g}")


def export(args, phones: list[str]) -> None:
    """The model directory ``--export OUT``: the base model with the trained projector and its
    phoneme head (fp16), the lexicons with each word's phonemes, and the inventory."""
    import shutil

    from server.engine.lexicon import LEXICON_DIR, PHONES_FILE, WEIGHTS_FILE, lexicon_files, read_lines
    from server.engine.loader import load_model

    model = with_phone_head(load_model(args.model, "cpu"), phones, _saved_projector(args.state))
    out = args.export
    model.to(torch.device("cpu"), torch.float16).save(out)
    shutil.copy(Path(args.model) / "whisper" / "LICENSE.whisper", out / "whisper" / "LICENSE.whisper")
    alphabet = {t for t in model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer)))) if len(t) == 1}
    # every language's file as .xz: in phonemes from --lexicons where --phone-languages says so,
    # else the base model's characters; its tuned weights come along (retune the phonemic ones)
    said = set(args.phone_languages.split(","))
    (out / LEXICON_DIR).mkdir(exist_ok=True)
    shutil.copy(Path(args.model) / LEXICON_DIR / WEIGHTS_FILE, out / LEXICON_DIR / WEIGHTS_FILE)
    for path in sorted((Path(args.model) / LEXICON_DIR).glob(f"*{CONTEXT_SUFFIX}")):
        shutil.copy(path, out / LEXICON_DIR / path.name)  # word pairs: spelled, not said, so they come as they are
    for language, path in lexicon_files(Path(args.model) / LEXICON_DIR).items():
        source = lexicon_files(args.lexicons / "lexicon")[language] if language in said else path
        lines = [line + "\n" for line in read_lines(source) if set(line.split("\t")[0]) <= alphabet]
        target = out / LEXICON_DIR / f"{language}.tsv.xz"
        target.write_bytes(dp.compress("".join(lines).encode("utf-8"), target))
    dp.save_phones(out / LEXICON_DIR, phones)
    assert (out / LEXICON_DIR / PHONES_FILE).exists()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {args.state} over {args.model} -> {out} ({size / 1e6:.1f} MB, {len(phones)} phonemes)")


def _saved_projector(path: Path) -> dict:
    """A --state file's projector, its phoneme head included."""
    return torch.load(path, weights_only=False)["projector"]


def _weights(spec: str):
    for part in filter(None, spec.split(",")):
        lang, lm, ws = part.split(":")
        yield lang, (float(lm), float(ws))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="server/models/demo")
    parser.add_argument("--lexicons", type=Path, default=Path("runs/phones"), help="phones.json + lexicon/*.tsv*, or a model directory (lexicon/phones.json)")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/shards"))
    parser.add_argument("--state", type=Path, default=Path("runs/phones/state.pt"))
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--lr", type=float, default=3e-4, help="the projector's")
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument("--char-weight", type=float, default=0.5)
    parser.add_argument("--frames-per-batch", type=int, default=12_000)
    parser.add_argument("--save-every", type=float, default=300.0)
    parser.add_argument("--channel-augment", type=float, default=0.0,
                        help="share of rows whose encoder channels are jittered and masked (FramePool.batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--eval", type=Path, metavar="HELDOUT_DIR")
    parser.add_argument("--per-language", type=int, default=20)
    parser.add_argument("--no-human", action="store_true")
    parser.add_argument("--weights", default="", help="lang:lm_weight:word_score,... for the phone lexicon")
    parser.add_argument("--show", type=int, default=0, help="print this many examples")
    parser.add_argument("--export", type=Path, metavar="OUT", help="write the model directory with the phoneme head")
    parser.add_argument("--phone-languages", default="en,de,fr,es,hi,zh",
                        help="with --export: the languages searched in phonemes (the rest keep characters)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from server.engine.loader import load_model

    model = load_model(args.model, "cpu")
    model.projector.float(), model.backbone.float()
    phones = dp.load_phones(args.lexicons)
    if args.export:
        export(args, phones)
    elif args.eval:
        model = with_phone_head(model, phones, _saved_projector(args.state) if args.state.exists() else None)
        evaluate(args, model, phones)
    else:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        train(args, with_phone_head(model, phones), phones)


if __name__ == "__main__":
    main()
