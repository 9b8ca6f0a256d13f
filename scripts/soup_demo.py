#!/usr/bin/env python
"""Average the trained parts of two demo model directories (a "model soup").

Why: a run continued on one kind of speech forgets some of what the weights it started
from knew (trained on espeak alone, the projector read synthetic speech better and human
English worse). Two runs that started from the same weights can be averaged weight by
weight, and the average often keeps what each is good at; evaluating a candidate costs a
minute, training another costs an hour. The projector and the backbone are averaged
(``--weight`` towards ``NEW``); the frozen whisper encoder, the tokenizer, the lexicon and
``dgasr.json`` are copied from ``NEW``. Both directories must share the architecture.

    python scripts/soup_demo.py server/models/demo runs/demo/export --weight 0.5 --out runs/soup
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TRAINED = ("projector/projector.safetensors", "backbone/model.safetensors")


def soup(old: Path, new: Path, weight: float, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(new, out, symlinks=False)
    for name in TRAINED:
        a, b = load_file(old / name), load_file(new / name)
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            raise SystemExit(f"{name}: {old} and {new} do not share an architecture")
        mixed = {k: ((1 - weight) * a[k].float() + weight * b[k].float()).to(b[k].dtype) for k in b}
        save_file(mixed, out / name, metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="a model directory, e.g. the shipped server/models/demo")
    parser.add_argument("new", type=Path, help="a model directory trained from the same weights")
    parser.add_argument("--weight", type=float, default=0.5, help="share of NEW in the average")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0.0 <= args.weight <= 1.0:
        raise SystemExit("--weight must be between 0 and 1")
    soup(args.old, args.new, args.weight, args.out)
    print(f"{args.out}: {1 - args.weight:g} x {args.old} + {args.weight:g} x {args.new}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
