#!/usr/bin/env python
"""Engine latency and batching throughput, measured through the real engine worker.

Prints a table: p50/p95 latency of one draft and one final at batch 1, then throughput
(requests per second) of finals and drafts at batch sizes 1/4/16 and the ratio of the
largest batch to batch 1, all measured in the same process on the same model.

    python scripts/bench_engine.py --model tiny-random --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server.engine import Engine, TranscribeRequest, load_model  # noqa: E402


def _audio(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _speech(seconds: float, seed: int) -> np.ndarray:
    """``seconds`` of English speech: bench_streams.py's sentences, 0.3 s apart, cut to length.

    The cost file is measured on speech, as the server sees it: the per-row decode (the
    lexicon's search, the word alignment) follows the words said and costs nothing on noise.
    """
    from audio_fixtures import speech_with_pauses
    from bench_streams import PHRASES

    parts: list[str | float] = []
    for k in range(int(seconds // 2) + 2):
        parts += [PHRASES[(seed + k) % len(PHRASES)], 0.3]
    audio, _ = speech_with_pauses(parts, seed=seed)
    return audio[: int(seconds * 16000)]


def write_costs(engine, model, args, seconds: float, clips: list[np.ndarray] | None = None) -> int:
    """Per batch size: median phase times of a few final-step batches of speech, served as the
    server serves finals (the stream's language, word timings) -> encoder, prompt, one step, decode.

    ``clips``: the requests' audio (default: espeak speech made here, :func:`_speech`).
    """
    from costs import Costs

    spec = model.spec
    sizes = [int(x) for x in args.batches.split(",")]
    clips = clips or [_speech(seconds, k) for k in range(8)]
    encoder, prompt, step, decode = [], [], [], []
    for b in sizes:
        samples = []
        for r in range(max(3, args.repeats // 4)):
            requests = [TranscribeRequest(clips[(r * b + k) % len(clips)], spec.final_steps, args.language, seed=k,
                                          word_timings=True) for k in range(b)]
            samples.append(engine.transcribe(requests)[0].timings)
        med = lambda f: statistics.median(getattr(t, f) for t in samples)  # noqa: E731
        encoder.append(round(med("features_ms") + med("audio_encoder_ms"), 3))
        prompt.append(round(med("prompt_encode_ms"), 3))
        step.append(round(med("denoise_ms") / spec.final_steps, 3))
        decode.append(round(med("decode_ms"), 3))
        print(f"batch {b:3d}: encoder {encoder[-1]:8.1f} ms  prompt {prompt[-1]:8.1f} ms  step {step[-1]:8.2f} ms  "
              f"decode {decode[-1]:8.1f} ms")
    label = args.label or f"{spec.name} on {model.device}, {seconds:.1f} s requests of speech"
    language = args.language or "automatic"
    Costs(label, "measured", str(model.device), spec.name, spec.window_seconds, spec.canvas_length,
          spec.draft_steps, spec.final_steps, sizes, encoder, prompt, step,
          notes=f"scripts/bench_engine.py --model {args.model} --device {args.device} --seconds {seconds:g} "
                f"--batches {args.batches} --write-costs; torch threads {torch_threads()}; English speech, "
                f"language {language}, finals with word timings",
          request_seconds=seconds, encoder_scales=spec.encoder_bucket_seconds > 0, decode_ms=decode,
          ).save(args.write_costs)
    print(f"wrote {args.write_costs}")
    engine.close()
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20, help="latency samples per kind")
    p.add_argument("--batches", default="1,4,16", help="batch sizes for throughput")
    p.add_argument("--seconds", type=float, default=None, help="audio per request (default: 80%% of the window)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default on a CPU: what dgasr-server uses, all cores but one)")
    p.add_argument("--write-costs", metavar="FILE", help="only measure a cost file (scripts/costs.py) and write it")
    p.add_argument("--label", default=None, help="with --write-costs: what the file describes")
    p.add_argument("--language", default=None,
                   help="with --write-costs: the requests' language hint (default: none, automatic, as /v1/listen)")
    args = p.parse_args()

    from server.cli.server import cpu_threads

    threads = args.threads or (cpu_threads() if args.device == "cpu" else None)
    engine = Engine(lambda: load_model(args.model, args.device), threads=threads).start()
    model = engine.wait_ready()
    spec = model.spec
    seconds = args.seconds or spec.window_seconds * 0.8
    draft, final = spec.draft_steps, spec.final_steps
    print(f"model={spec.name} device={model.device} audio={seconds:.1f}s draft_steps={draft} "
          f"final_steps={final} load={engine.stats.load_seconds:.2f}s warmup={engine.stats.warmup_seconds:.2f}s")

    print("\nlatency at batch 1 (ms)        p50      p95   features  encoder   prompt  denoise")
    p50: dict[str, float] = {}
    for name, steps in (("draft", draft), ("final", final)):
        lat, phases = [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            result = engine.transcribe([TranscribeRequest(_audio(seconds, i), steps, seed=i)])[0]
            lat.append((time.perf_counter() - t0) * 1000)
            phases.append(result.timings)
        p50[name] = _pct(lat, 0.5)
        med = lambda f: statistics.median(getattr(t, f) for t in phases)  # noqa: E731
        print(f"  {name:5s} ({steps:2d} steps)          {_pct(lat, .5):8.1f} {_pct(lat, .95):8.1f} "
              f"{med('features_ms'):9.1f} {med('audio_encoder_ms'):8.1f} {med('prompt_encode_ms'):8.1f} "
              f"{med('denoise_ms'):8.1f}")

    if args.write_costs:
        return write_costs(engine, model, args, seconds)
    sizes = [int(x) for x in args.batches.split(",")]
    print("\nthroughput (requests/s)  " + "".join(f"{'b=' + str(b):>10s}" for b in sizes) + f"{'b' + str(sizes[-1]) + '/b1':>10s}")
    for name, steps in (("final", final), ("draft", draft)):
        rates = []
        for b in sizes:
            reps = max(2, 48 // b)
            t0 = time.perf_counter()
            for r in range(reps):
                engine.transcribe([TranscribeRequest(_audio(seconds, r * b + k), steps, seed=k) for k in range(b)])
            rates.append(reps * b / (time.perf_counter() - t0))
        print(f"  {name} ({steps:2d} steps)       " + "".join(f"{r:10.1f}" for r in rates) + f"{rates[-1] / rates[0]:10.2f}")
    print(f"\none final at batch 1: {seconds / (p50['final'] / 1000):.1f}x faster than real time "
          f"({seconds:.1f} s of audio in {p50['final']:.1f} ms)")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
