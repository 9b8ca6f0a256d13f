#!/usr/bin/env python
"""Experiment: how much a word lexicon with unigram frequencies adds to a model's CTC reading.

Why this exists: the demo model's errors are mostly spelling. Its CTC head reads sounds
well enough ("feachurs lettas hosd", "dash wad had tan lesure") but spells unseen words
phonetically, and its 1-layer-deep denoiser only copies the canvas it is given. A lexicon
prior is what classic CPU recognizers (vosk/Kaldi) lean on; this script measures what it
would buy before any engine code depends on it.

For each language with spaces (en, de, fr, es, hi) it writes a KenLM ARPA file from the
``wordfreq`` top-N list (words whose letters the tokenizer has, plus 0-999; unigram
probabilities with a minimal bigram section, since KenLM refuses a pure unigram model) and
decodes the model's CTC log-probabilities with ``pyctcdecode`` beam search. Mandarin keeps
the plain beam (no word boundaries to build a lexicon on). The table beside it is
pyctcdecode's own beam without the LM, so the two columns differ only by the prior.

Needs (not in any extra: pyctcdecode pins numpy<2)::

    pip install pyctcdecode kenlm
    python scripts/eval_ctc_lm.py --model runs/demo3/export --data runs/demo/heldout
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from eval_wer import load_heldout, load_human  # noqa: E402
from scoring import error_rate  # noqa: E402

LEXICON_LANGS = ("en", "de", "fr", "es", "hi")


def write_arpa(path: Path, language: str, top_n: int, alphabet: set[str]) -> list[str]:
    """A unigram ARPA file for ``language``; returns its words (pyctcdecode's ``unigrams``)."""
    import wordfreq

    words = [w for w in wordfreq.top_n_list(language, top_n) if " " not in w and set(w) <= alphabet]
    freq = np.array([wordfreq.word_frequency(w, language) for w in words]) + 1e-9
    numbers = [str(i) for i in range(1000)]
    probs = np.concatenate([freq / freq.sum() * 0.97, np.full(len(numbers), 0.03 / len(numbers))])
    words += numbers
    lines = ["\\data\\", f"ngram 1={len(words) + 3}", "ngram 2=1", "", "\\1-grams:",
             "-99\t<s>\t0", "-1.0\t</s>\t0", "-6.0\t<unk>\t0"]
    lines += [f"{math.log10(p):.4f}\t{w}\t0" for w, p in zip(words, probs)]
    lines += ["", "\\2-grams:", "-1.0\t<s> </s>", "", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/heldout"))
    parser.add_argument("--top", type=int, default=50_000, help="lexicon size per language")
    parser.add_argument("--alpha", type=float, default=0.5, help="LM weight")
    parser.add_argument("--beta", type=float, default=1.0, help="word insertion bonus")
    parser.add_argument("--unk", type=float, default=-10.0, help="score offset of an out-of-lexicon word")
    parser.add_argument("--beam", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    from pyctcdecode import build_ctcdecoder

    from server.engine import load_model
    from server.engine.frames import embed_audio

    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    tok = model.tokenizer
    names = tok.convert_ids_to_tokens(list(range(len(tok))))
    blank = model.backbone.config.text_config.pad_token_id
    special = [i for i, n in enumerate(names) if i != blank and n.startswith("<") and n.endswith(">")]
    labels = ["" if i == blank else (f"\u2047{i}" if i in special else n) for i, n in enumerate(names)]
    alphabet = {n for n in labels if len(n) == 1}
    plain = build_ctcdecoder(labels)
    decoders = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in LEXICON_LANGS:
            arpa = Path(tmp) / f"{lang}.arpa"
            words = write_arpa(arpa, lang, args.top, alphabet)
            decoders[lang] = build_ctcdecoder(labels, kenlm_model_path=str(arpa), unigrams=words,
                                              alpha=args.alpha, beta=args.beta, unk_score_offset=args.unk)
    rows = load_heldout(args.data) + load_human()
    results: dict[str, list[tuple[str, str, str]]] = {}
    with torch.inference_mode():
        for row in rows:
            embeds = embed_audio(model, [row["wav"]]).to(model.backbone.dtype)
            logp = torch.log_softmax(model.backbone.lm_head(embeds).float(), -1)[0, :, : len(tok)]
            logp[:, special] = -30.0
            logp = logp.numpy()
            lm = decoders.get(row["language"], plain).decode(logp, beam_width=args.beam)
            results.setdefault(row["set"], []).append((row["text"], lm, plain.decode(logp, beam_width=args.beam)))
    print(f"model {args.model}, lexicon top {args.top}, alpha {args.alpha}, beta {args.beta}, unk {args.unk}")
    print(f"{'set':9s} {'metric':6s} | {'ctc beam':>9s} | {'+ lexicon':>9s}")
    for name, items in results.items():
        refs = [r for r, _, _ in items]
        metric = "CER" if name in ("hi", "zh") else "WER"
        print(f"{name:9s} {metric:6s} | {error_rate(name, refs, [p for _, _, p in items]):9.1%} | "
              f"{error_rate(name, refs, [h for _, h, _ in items]):9.1%}")


if __name__ == "__main__":
    main()
