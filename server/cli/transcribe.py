"""`dgasr-transcribe`: transcribe audio files offline with the same engine the server uses.

Each file is read with soundfile, downmixed, resampled to 16 kHz, cut into pieces no
longer than the model's window at quiet points, and the pieces of all files are sent to
the engine in batches. Each file's transcript is printed on its own line, in the order
the files were given. Exit codes: 0 ok, 1 model could not be loaded, 2 bad usage or an
unreadable file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import soundfile as sf

from server.core.audio import resample, soundfile_args, split_long_audio
from server.core.pcm import LANGUAGES

__all__ = ["main", "read_audio"]


def read_audio(path: str, sample_rate: int = 16000, raw_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``; raises ValueError naming the file on failure.

    Headerless ``.raw``/``.pcm``/``.s16`` files are read as 16-bit mono at ``raw_rate``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"cannot read {path}: no such file" if not os.path.exists(path) else
                         f"cannot read {path}: not a file")
    try:
        with sf.SoundFile(path, **soundfile_args(path, raw_rate)) as f:
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise ValueError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dgasr-transcribe",
        description="Transcribe audio files (wav, flac, ogg, ...) with a dgasr model; one line per file.",
        epilog="Exit codes: 0 ok, 1 model could not be loaded, 2 bad usage or unreadable file.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files, transcribed in order")
    p.add_argument("--model", default="auto", help="auto | preset name | model directory (default: auto)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's final steps)")
    p.add_argument("--language", choices=LANGUAGES, default=None, help="language hint (default: automatic)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="pieces per engine batch (default: 8)")
    p.add_argument("--raw-rate", type=int, default=16000, metavar="HZ",
                   help="sample rate of headerless .raw/.pcm/.s16 files, read as 16-bit mono (default: 16000)")
    p.add_argument("--timings", action="store_true", help="print per-file timing to stderr")
    for part in ("whisper", "backbone", "adapter"):
        p.add_argument(f"--{part}", metavar="REPO_OR_DIR", help=f"override the model's {part} (HF repo id or dir)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the engine (torch, transformers) only once the arguments are known to be good
    from server.engine import Engine, ModelLoadError, TranscribeRequest, load_model
    from server.engine.loader import resolve_model_name

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        audios = [read_audio(f, raw_rate=args.raw_rate) for f in args.files]
    except ValueError as exc:
        print(f"dgasr-transcribe: {exc}", file=sys.stderr)
        return 2
    try:
        name = resolve_model_name(args.model)
    except ModelLoadError as exc:
        print(f"dgasr-transcribe: {exc}", file=sys.stderr)
        return 1
    parts = {"whisper": args.whisper, "backbone": args.backbone, "adapter": args.adapter}
    engine = Engine(lambda: load_model(name, args.device, parts=parts), warmup=False).start()
    try:
        model = engine.wait_ready()
    except ModelLoadError as exc:
        print(f"dgasr-transcribe: {exc}", file=sys.stderr)
        return 1
    spec = model.spec
    steps = args.steps or spec.final_steps
    pieces: list[tuple[int, TranscribeRequest]] = []
    for index, audio in enumerate(audios):
        for start, end in split_long_audio(audio, spec.sample_rate, spec.window_seconds):
            pieces.append((index, TranscribeRequest(audio[start:end], steps, args.language, args.seed)))
    texts: list[list[str]] = [[] for _ in audios]
    try:
        t0 = time.perf_counter()
        for i in range(0, len(pieces), max(1, args.batch_size)):
            chunk = pieces[i : i + args.batch_size]
            for (index, _), result in zip(chunk, engine.transcribe([r for _, r in chunk])):
                if result.text:
                    texts[index].append(result.text)
        elapsed = time.perf_counter() - t0
    except ValueError as exc:
        print(f"dgasr-transcribe: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    for text in texts:
        print(" ".join(text), flush=True)
    if args.timings:
        total = sum(len(a) for a in audios) / spec.sample_rate
        print(f"{total:.1f} s of audio in {elapsed:.2f} s ({total / max(elapsed, 1e-9):.1f}x real time) "
              f"with {spec.name} on {model.device}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
