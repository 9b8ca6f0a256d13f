"""`dgasr-transcribe`: transcribe audio files offline with the same engine the server uses.

Each file is read with soundfile, downmixed, resampled to 16 kHz and cut into segments by
the same VAD a live stream goes through (:mod:`server.service.files`), so a file gives
the same text here as through the server's ``POST /v1/audio/transcriptions``. The
segments of all files go to the engine in batches. Each file's transcript is printed on
its own line, in the order the files were given. Exit codes: 0 ok, 1 model could not be loaded, 2 bad usage or an
unreadable file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

from server.core.audio import decode_audio_file
from server.core.pcm import LANGUAGES

__all__ = ["main", "read_audio"]


def read_audio(path: str, raw_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples at 16 kHz; raises ValueError naming the file on failure.

    Headerless ``.raw``/``.pcm``/``.s16`` files are read as 16-bit mono at ``raw_rate``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"cannot read {path}: no such file" if not os.path.exists(path) else
                         f"cannot read {path}: not a file")
    return decode_audio_file(path, path, raw_rate)


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
    p.add_argument("--batch-size", type=int, default=8, help="segments per engine batch (default: 8)")
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
    from server.engine import Engine, ModelLoadError, load_model
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
    from server.service.config import ServerConfig, session_config
    from server.service.files import file_session, transcribe_offline

    spec = model.spec
    config = session_config(ServerConfig(), spec, final_steps=args.steps, seed=args.seed)
    try:
        t0 = time.perf_counter()
        results = transcribe_offline(engine, [(file_session(config, args.language), a) for a in audios],
                                     args.batch_size)
        elapsed = time.perf_counter() - t0
    except ValueError as exc:
        print(f"dgasr-transcribe: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    texts = [r.text for r in results]
    for text in texts:
        print(text, flush=True)
    if args.timings:
        total = sum(len(a) for a in audios) / spec.sample_rate
        print(f"{total:.1f} s of audio in {elapsed:.2f} s ({total / max(elapsed, 1e-9):.1f}x real time) "
              f"with {spec.name} on {model.device}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
