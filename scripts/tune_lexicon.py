#!/usr/bin/env python
"""Grid-search the lexicon decoder's weights per language on a development set; print the table.

The lexicon search (``server/engine/lexicon.py``) scores a word sequence by CTC +
``lm_weight`` x the words' log probabilities + ``word_score`` per word. The best balance
depends on the model (how sure its CTC reading is) and on the language (Mandarin's words
are one or two characters and the search also places their boundaries), so it is measured,
not guessed: each setting decodes the whole set at the model's final steps, exactly as
served, and the per-language error rates are printed with the best setting per language.
``--write`` saves those into the model's ``lexicon/weights.json``, which the loader reads.

Tune on a development set that is not the evaluation's held-out set (another seed of
the same held-out voices and speeds), so the table ``eval_wer.py`` prints stays unbiased:

    python scripts/demo_data.py --out runs/dev --per-language 20 --seed 2000000
    python scripts/tune_lexicon.py --model runs/demo/export --data runs/dev --write
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_wer import load_heldout, offline  # noqa: E402
from scoring import CER_LANGS, error_rate  # noqa: E402

from server.engine import load_model  # noqa: E402
from server.engine.lexicon import LexiconWeights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="preset name or model directory")
    parser.add_argument("--data", type=Path, default=Path("runs/dev"))
    parser.add_argument("--lm-weights", default="0.3,0.5,0.8,1.2")
    parser.add_argument("--word-scores", default="-1,0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="save the best weights into the model's lexicon/")
    parser.add_argument("--languages", help="comma-separated: tune only these (the others keep their weights)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    if model.lexicon is None:
        raise SystemExit(f"{args.model} has no lexicon to tune")
    wanted = args.languages.split(",") if args.languages else model.lexicon.languages
    saved = dict(model.lexicon.weights)  # what the languages not tuned here keep
    rows = [r for r in load_heldout(args.data) if r["language"] in model.lexicon.languages and r["language"] in wanted]
    languages = list(dict.fromkeys(r["language"] for r in rows))
    grid = list(itertools.product([float(x) for x in args.lm_weights.split(",")],
                                  [float(x) for x in args.word_scores.split(",")]))
    results: dict[tuple[float, float], dict[str, float]] = {}
    for lm_weight, word_score in grid:
        # each language keeps its saved context (how much its word pairs count): only these two are tuned
        model.lexicon.set_weights({lang: dataclasses.replace(saved.get(lang, LexiconWeights()), lm_weight=lm_weight,
                                                             word_score=word_score) for lang in languages})
        hyps, _ = offline(model, rows, model.spec.final_steps)
        results[lm_weight, word_score] = {
            lang: error_rate(lang, [r["text"] for r in rows if r["language"] == lang],
                             [h for h, r in zip(hyps, rows) if r["language"] == lang]) for lang in languages}
        cells = " ".join(f"{100 * results[lm_weight, word_score][lang]:6.1f}" for lang in languages)
        print(f"lm_weight {lm_weight:4.2f} word_score {word_score:5.2f} | {cells}", flush=True)
    print("metric: " + " ".join(f"{lang}:{'CER' if lang in CER_LANGS else 'WER'}" for lang in languages))
    best = {}
    for lang in languages:
        setting = min(grid, key=lambda s: results[s][lang])
        best[lang] = dataclasses.replace(saved.get(lang, LexiconWeights()), lm_weight=setting[0], word_score=setting[1])
        print(f"best {lang}: lm_weight {setting[0]:g} word_score {setting[1]:g}: {100 * results[setting][lang]:.1f}%")
    if args.write:
        kept = {lang: w for lang, w in saved.items() if lang not in best}
        path = model.lexicon.write_weights(kept | best)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
