#!/usr/bin/env python
"""How many real-time streams one device sustains: the real scheduling code, in virtual time.

How this works
--------------
N virtual clients each speak real speech (espeak sentences with pauses, through the real
webrtcvad segmentation) in 100 ms chunks at real time. Everything between them and the
device is the production code: :class:`~server.core.session.Session`,
:class:`~server.service.registry.SessionSink` / ``SessionRegistry``,
:class:`~server.service.loop.EngineLoop` and :class:`~server.core.scheduler.Scheduler`.
Only the engine is replaced: :class:`CostEngine` answers each batch after the time the
cost file says that batch takes (``scripts/costs.py``), and the event loop runs on a
virtual clock (:class:`VirtualLoop`: when nothing is ready it jumps to the next timer), so
100 streams for 10 minutes take seconds of CPU, not 10 minutes.

Per stream count it prints first-partial and final latency (p50/p95), the share of
drafts dropped (replaced before they ran, or after their segment closed), device
utilisation, and whether it kept up: final p95 under ``--target-ms`` and no growing
backlog (the last third's final p95 not far above the first third's). Last line:
``max sustained streams: N``.

    python scripts/capacity.py --costs costs/h200-real-estimate.json --streams 8,16,32,64,128 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import selectors
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from costs import Costs  # noqa: E402
from server.core.events import (  # noqa: E402
    Audio,
    Draft,
    EndStream,
    Final,
    SpeechStarted,
    SpeechStopped,
)
from server.core.pcm import SAMPLE_RATE, Encoding  # noqa: E402
from server.core.requests import PhaseTimings, TranscribeResult  # noqa: E402
from server.core.scheduler import JobKind, Scheduler  # noqa: E402
from server.core.session import Session, SessionConfig, SessionState, StreamFormat  # noqa: E402
from server.core.vad_config import VadConfig  # noqa: E402
from server.service.loop import EngineLoop  # noqa: E402
from server.service.registry import SessionRegistry, SessionSink  # noqa: E402

CHUNK = 0.1  # seconds of audio per client message
SCRIPT = [0.5, "Good morning, this is the first of several sentences.", 0.9,
          "Each one is followed by a pause, as people speak.", 0.7, "Some are short.", 1.2,
          "Others run on for a while before the speaker takes a breath and goes on.", 0.8,
          "Numbers like four hundred and twelve come up too.", 1.5]


class VirtualSelector(selectors.DefaultSelector):
    """A selector that, when no file is ready, advances the loop's clock by the wait instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None):
        events = super().select(0)
        if events or timeout is None:  # None: nothing scheduled; the loop's own wake-up pipe is registered
            return events if events or timeout is not None else super().select(0.001)
        self.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


class CostEngine:
    """The engine's ``submit``, answered after the cost file's time for the batch (virtual)."""

    def __init__(self, costs: Costs) -> None:
        self.costs = costs
        self.busy = 0.0

    def submit(self, requests) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        steps = max(r.steps for r in requests)
        longest = max(len(r.audio) for r in requests) / SAMPLE_RATE
        ms = self.costs.batch_ms(len(requests), steps, longest)
        self.busy += ms / 1000
        timings = PhaseTimings(0.0, 0.0, 0.0, ms, len(requests))
        results = [TranscribeResult("", (), r.steps, timings) for r in requests]
        asyncio.get_running_loop().call_later(ms / 1000, future.set_result, results)
        return future


@dataclass
class Tally:
    first_partial: list[float] = field(default_factory=list)
    final: list[tuple[float, float]] = field(default_factory=list)  # (when, latency)
    drafts_asked: int = 0
    drafts_shown: int = 0
    segments: int = 0


def _speech() -> np.ndarray:
    from audio_fixtures import speech_with_pauses

    audio, _ = speech_with_pauses(SCRIPT)
    return audio


async def _client(index: int, audio: np.ndarray, seconds: float, config: SessionConfig, loop_: EngineLoop,
                  registry: SessionRegistry, tally: Tally, rng: np.random.Generator) -> None:
    loop = asyncio.get_running_loop()
    session = Session(f"c{index}", StreamFormat(SAMPLE_RATE, Encoding.PCM_F32LE, "en"), config, clock=loop.time)
    started: dict[int, float] = {}
    stopped: dict[int, float] = {}

    def observe(event) -> None:
        now = loop.time()
        if isinstance(event, SpeechStarted):
            started[event.segment] = now
            tally.segments += 1
        elif isinstance(event, Draft):
            tally.drafts_shown += 1
            if event.segment in started:
                tally.first_partial.append(now - started.pop(event.segment))
        elif isinstance(event, SpeechStopped):
            stopped[event.segment] = now
            started.pop(event.segment, None)
        elif isinstance(event, Final) and event.segment in stopped:
            tally.final.append((now, now - stopped.pop(event.segment)))

    sink = SessionSink(session, loop_, lambda event: ["x"])
    sink.add_observer(observe)
    registry.add(sink)

    async def read() -> None:  # the client reads everything at once
        while True:
            await sink.outbox.get()
            sink.update_room()

    reader = asyncio.create_task(read())

    def route(out) -> None:
        tally.drafts_asked += sum(1 for job in out.jobs if job.kind is JobKind.DRAFT)
        sink.route(out)

    step = int(CHUNK * SAMPLE_RATE)
    if seconds:  # a long stream: the clip looped from a random point, clients not in lockstep
        offset, total = int(rng.integers(0, len(audio))), int(seconds * SAMPLE_RATE)
        await asyncio.sleep(float(rng.uniform(0, 1.0)))
    else:  # the clip once, from the start, as bench_streams.py's clients do
        offset, total = 0, len(audio)
    for sent in range(0, total, step):
        start = (offset + sent) % len(audio)
        chunk = np.take(audio, range(start, start + step), mode="wrap").astype("<f4")
        route(session.handle(Audio(chunk.tobytes())))
        await asyncio.sleep(CHUNK)
    route(session.handle(EndStream("eos")))
    while session.state is not SessionState.CLOSED:
        await asyncio.sleep(0.05)
    reader.cancel()
    registry.remove(session.id)


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def simulate(costs: Costs, streams: int, seconds: float, max_batch: int, audio, seed: int = 0,
             partial_interval_ms: int = 450) -> dict:
    """One run; ``audio`` is one clip for every client, or a function of the client's index
    (``seconds`` 0: each client speaks its clip once)."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(_simulate(costs, streams, seconds, max_batch, audio, seed, partial_interval_ms))
    finally:
        loop.close()


async def _simulate(costs: Costs, streams: int, seconds: float, max_batch: int, audio: np.ndarray, seed: int,
                    partial_interval_ms: int) -> dict:
    engine = CostEngine(costs)
    registry = SessionRegistry()
    loop_ = EngineLoop(engine, Scheduler.for_device(cpu=costs.device == "cpu"), max_batch, registry.deliver)
    runner = asyncio.create_task(loop_.run())
    window = costs.window_seconds
    config = SessionConfig(model=costs.model, draft_steps=costs.draft_steps, final_steps=costs.final_steps,
                           vad=VadConfig(max_segment_s=max(2.0, window - 0.5), split_search_s=min(3.0, window / 4)),
                           partial_interval_ms=partial_interval_ms)
    tally = Tally()
    rng = np.random.default_rng(seed)
    t0 = asyncio.get_running_loop().time()
    clips = [audio(i) if callable(audio) else audio for i in range(streams)]
    await asyncio.gather(*(_client(i, clips[i], seconds, config, loop_, registry, tally, rng) for i in range(streams)))
    elapsed = asyncio.get_running_loop().time() - t0
    loop_.stop()
    await runner
    finals = [lat for _, lat in tally.final]
    third = max(1, len(tally.final) // 3)
    ordered = [lat for _, lat in sorted(tally.final)]
    return {
        "streams": streams, "finals": len(finals), "segments": tally.segments,
        "first_partial_p50": _pct(tally.first_partial, 50), "first_partial_p95": _pct(tally.first_partial, 95),
        "final_p50": _pct(finals, 50), "final_p95": _pct(finals, 95),
        "early_p95": _pct(ordered[:third], 95), "late_p95": _pct(ordered[-third:], 95),
        "drafts_dropped": 1 - tally.drafts_shown / max(1, tally.drafts_asked),
        "utilisation": engine.busy / max(elapsed, 1e-9), "batches": loop_.stats.batches,
        "mean_batch": statistics.fmean(loop_.stats.batch_sizes) if loop_.stats.batch_sizes else 0.0,
    }


def kept_up(row: dict, target_ms: float) -> bool:
    growing = row["late_p95"] > 1.5 * row["early_p95"] + 0.25
    return row["finals"] > 0 and row["final_p95"] * 1000 <= target_ms and not growing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--costs", required=True, type=Path, help="a cost file (scripts/costs.py)")
    parser.add_argument("--streams", default="1,2,4,8,16,32", help="stream counts to try")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long every client speaks (virtual)")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    parser.add_argument("--target-ms", type=float, default=1500.0, help="final p95 a stream count must stay under")
    parser.add_argument("--partial-interval-ms", type=int, default=450, help="the server's --partial-interval-ms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--like-bench-streams", action="store_true",
                        help="each client speaks bench_streams.py's three sentences once, all starting together "
                             "(for comparing with that benchmark; --seconds is ignored)")
    args = parser.parse_args()
    costs = Costs.load(args.costs)
    audio = _speech()
    if args.like_bench_streams:
        from bench_streams import _speech as bench_speech

        audio, args.seconds = (lambda i: bench_speech(i)[0]), 0.0
    print(f"costs: {costs.label} ({costs.kind}, {costs.device}); {costs.draft_steps}/{costs.final_steps} steps; "
          f"max batch {args.max_batch}; partials every {args.partial_interval_ms} ms; "
          f"{f'{args.seconds:g} s per client' if args.seconds else 'bench_streams clips'}; "
          f"target final p95 {args.target_ms:g} ms")
    print(f"{'streams':>7s} {'1st partial p50/p95 ms':>23s} {'final p50/p95 ms':>17s} {'drafts dropped':>15s} "
          f"{'util':>5s} {'batch':>6s}  kept up")
    best = 0
    for n in (int(x) for x in args.streams.split(",")):
        row = simulate(costs, n, args.seconds, args.max_batch, audio, args.seed, args.partial_interval_ms)
        ok = kept_up(row, args.target_ms)
        best = n if ok else best
        print(f"{n:7d} {row['first_partial_p50'] * 1000:11.0f} / {row['first_partial_p95'] * 1000:7.0f} "
              f"{row['final_p50'] * 1000:8.0f} / {row['final_p95'] * 1000:6.0f} {row['drafts_dropped']:14.0%} "
              f"{row['utilisation']:5.0%} {row['mean_batch']:6.1f}  {'yes' if ok else 'no'}")
    print(f"max sustained streams: {best}")


if __name__ == "__main__":
    main()
