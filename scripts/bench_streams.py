#!/usr/bin/env python
"""N concurrent clients streaming real speech at real-time pace; latency with and without batching.

For each client count it starts a dgasr server in this process (a real websockets server on
a free port, the real engine), runs N simulated clients that stream speech files at real
time, and reports p50/p95 of:

* first-partial latency: speech onset (ground truth) -> first partial of that segment,
* finalization latency: end of speech (ground truth) -> final received by the client,
* engine queueing and engine time per batch, and the share of finals lost (must be 0),

then does the same with batching disabled (max batch 1) and prints the ratio (``--no-single``
leaves that out; ``--mixed`` adds a run where drafts fill the finals' batches, as the scheduler
did before it sent finals alone on CPU threads, and ``--many-drafts`` one where drafts are
batched as many as fit, as it did before it ran them one by one on CPU threads; each with the
ratio of its final p95). The speech is espeak-ng sentences (known onsets/ends) separated by pauses;
every client gets its own text. The last line says how many clients the batched server
sustained: the most, among the counts run, with no final lost and final p95 at most
``--target-ms`` after the end of speech (default 2,100 ms: the 600 ms of silence that ends
a segment plus the 1,500 ms target of ``scripts/capacity.py``).

With ``--costs FILE`` (a cost file, ``scripts/costs.py``) each row also shows how long the
live batches took against what the file predicts for the same batches (size, steps,
longest audio): the share of the device the server process's own work takes, which the
simulator (``scripts/capacity.py``) does not see.

With ``--greedy N``, each run also has N more clients asking for ``--greedy-steps`` draft
and final steps (the scheduler's fairness check): the table then reports the normal
clients only, with the fair scheduler and with a first-come-first-served baseline
(``FifoScheduler``), and the last lines compare their final p95 with and without the
greedy ones.

    python scripts/bench_streams.py --clients 1,4,16 --model tiny-random --device cpu
    python scripts/bench_streams.py --clients 4 --greedy 4 --greedy-steps 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from audio_fixtures import speech_with_pauses  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from server.cli.server import cpu_threads  # noqa: E402
from server.core.pcm import SAMPLE_RATE  # noqa: E402
from server.core.scheduler import Job, Scheduler  # noqa: E402
from server.engine import Engine, load_model  # noqa: E402
from server.service.config import ServerConfig  # noqa: E402
from server.transports.server import DgasrServer  # noqa: E402
from server.wire.v1 import parse_server_message  # noqa: E402

PHRASES = [
    "Please send the report before the meeting tomorrow.",
    "The weather will be sunny with a light breeze.",
    "Turn left at the second traffic light.",
    "Our next train leaves from platform four.",
]


@dataclass
class ClientResult:
    first_partial_ms: list[float] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    segments_expected: int = 0
    finals: int = 0


class FifoScheduler(Scheduler):
    """The baseline for ``--greedy``: finals in arrival order whatever their steps (no fairness)."""

    def next_batch(self, max_batch: int) -> list[Job]:
        if self._retries:
            return super().next_batch(max_batch)
        batch = sorted((j for queue in self._finals.values() for j in queue), key=lambda j: j.id)[:max_batch]
        for job in batch:
            queue = self._finals[job.session]
            queue.popleft()
            if not queue:
                del self._finals[job.session]
        self._final_count -= len(batch)
        while self._drafts and len(batch) < max_batch:
            batch.append(self._drafts.popitem(last=False)[1])
        return batch


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _speech(client: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    parts: list[str | float] = []
    for k in range(3):
        parts += [PHRASES[(client + k) % len(PHRASES)], 1.0]
    audio, truth = speech_with_pauses(parts[:-1], seed=client)
    return np.concatenate([np.zeros(8000, np.float32), audio, np.zeros(16000, np.float32)]), [
        (s + 0.5, e + 0.5) for s, e in truth
    ]


async def _client(url: str, client: int, chunk_ms: int = 100, query: str = "") -> ClientResult:
    audio, truth = _speech(client)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = 16000 * chunk_ms // 1000 * 2
    result = ClientResult(segments_expected=len(truth))
    first_partial: dict[int, float] = {}
    async with connect(f"{url}/v1/listen{query}") as ws:
        await ws.recv()  # ready
        t0 = time.perf_counter()

        async def send() -> None:
            for i, k in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, t0 + i * chunk_ms / 1000 - time.perf_counter()))
                await ws.send(pcm[k : k + step])
            await ws.send(json.dumps({"type": "eos"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            now = time.perf_counter() - t0
            msg = parse_server_message(raw)
            # Stream time sent so far equals wall time since t0 (paced), so ground-truth
            # speech times convert directly to wall-clock deadlines.
            if msg.type == "partial" and msg.segment not in first_partial and msg.segment < len(truth):
                first_partial[msg.segment] = now
                result.first_partial_ms.append((now - truth[msg.segment][0]) * 1000)
            elif msg.type == "final":
                result.finals += 1
                if msg.segment < len(truth):
                    result.final_ms.append((now - truth[msg.segment][1]) * 1000)
        await sender
    return result


class CostMeter:
    """Wraps the engine's ``submit``: each batch's time in the engine thread, and the cost file's for it."""

    def __init__(self, engine: Engine, costs_path: Path) -> None:
        from costs import Costs

        self.costs = Costs.load(costs_path)
        self.pairs: list[tuple[float, float]] = []  # (live ms, predicted ms)
        self._submit = engine.submit
        engine.submit = self.submit

    def submit(self, requests):
        predicted = self.costs.batch_ms(len(requests), max(r.steps for r in requests),
                                        max(len(r.audio) for r in requests) / SAMPLE_RATE)
        t0 = time.perf_counter()
        future = self._submit(requests)
        future.add_done_callback(lambda _: self.pairs.append(((time.perf_counter() - t0) * 1000, predicted)))
        return future

    def ratio(self) -> float:
        """Live over predicted, summed over the batches since the last call."""
        pairs, self.pairs = self.pairs, []
        return sum(a for a, _ in pairs) / max(sum(p for _, p in pairs), 1e-9) if pairs else float("nan")


async def _run(engine: Engine, clients: int, max_batch: int, greedy: int = 0, greedy_steps: int = 64,
               fifo: bool = False, meter: CostMeter | None = None, mixed: bool = False, many_drafts: bool = False) -> dict:
    server = DgasrServer(ServerConfig(port=0, max_batch=max_batch, max_sessions=max(64, clients + greedy)), engine)
    if fifo:
        server.scheduler = FifoScheduler()
    if mixed:  # drafts fill finals' batches even on CPU threads (the scheduler before 2026-12-06)
        server.scheduler.drafts_with_finals = True
    if many_drafts:  # drafts batched as many as fit, even on CPU threads (the scheduler before 2026-12-07)
        server.scheduler.max_drafts = None
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    hogs = f"?draft_steps={greedy_steps}&final_steps={greedy_steps}"
    try:
        results = await asyncio.gather(*(_client(url, c) for c in range(clients)),
                                       *(_client(url, clients + g, query=hogs) for g in range(greedy)))
        results = results[:clients]  # the normal clients' figures
    finally:
        await server.shutdown()  # also lets every session's handler record its stats
    stats = server.loop.stats
    return {
        "first": [x for r in results for x in r.first_partial_ms],
        "final": [x for r in results for x in r.final_ms],
        "lost": sum(r.segments_expected - r.finals for r in results),
        "expected": sum(r.segments_expected for r in results),
        "wait": list(stats.queue_wait_ms),
        "engine": list(stats.engine_ms),
        "batch": statistics.mean(stats.batch_sizes) if stats.batch_sizes else 0.0,
        "vad": 1000 * sum(f for f, _ in server.feed_stats) / max(sum(a for _, a in server.feed_stats), 1e-9),
        "live/cost": meter.ratio() if meter is not None else float("nan"),
    }


def _row(label: str, r: dict) -> str:
    return (
        f"{label:14s} {_pct(r['first'], .5):7.0f} {_pct(r['first'], .95):7.0f} {_pct(r['final'], .5):7.0f} "
        f"{_pct(r['final'], .95):7.0f} {_pct(r['wait'], .5):7.0f} {_pct(r['engine'], .5):7.0f} {r['batch']:6.1f} "
        f"{r['lost']:3d}/{r['expected']:<3d} {r['vad']:6.2f} {r['live/cost']:9.2f}"
    )


async def main_async(args: argparse.Namespace) -> None:
    threads = cpu_threads() if args.device == "cpu" else None
    engine = Engine(lambda: load_model(args.model, args.device), threads=threads).start()
    model = await asyncio.to_thread(engine.wait_ready)
    print(f"model={model.spec.name} device={model.device} draft_steps={model.spec.draft_steps} "
          f"final_steps={model.spec.final_steps} cpu_threads={threads} cores={os.cpu_count()}")
    print("latencies in ms; first = speech onset -> first partial, final = end of speech -> final;")
    print("queue = job waiting for a batch, engine = one batch on the device, vad = ms of session CPU")
    print("(decode + resample + VAD) per second of audio")
    meter = CostMeter(engine, args.costs) if args.costs else None
    if meter is not None:
        print(f"live/cost = engine time of the batches / {args.costs}'s time for the same batches")
    print(f"{'run':14s} {'first50':>7s} {'first95':>7s} {'final50':>7s} {'final95':>7s} {'queue50':>7s} "
          f"{'engine50':>7s} {'batch':>6s} lost    vad live/cost")
    sustained = 0
    for n in args.clients:
        if args.greedy:
            alone = await _run(engine, n, args.max_batch)
            crowded = await _run(engine, n, args.max_batch, args.greedy, args.greedy_steps)
            fifo = await _run(engine, n, args.max_batch, args.greedy, args.greedy_steps, fifo=True)
            print(_row(f"{n} alone", alone))
            print(_row(f"{n} +{args.greedy}x{args.greedy_steps} fair", crowded))
            print(_row(f"{n} +{args.greedy}x{args.greedy_steps} fifo", fifo))
            for label, run in (("fair", crowded), ("fifo", fifo)):
                ratio = _pct(run["final"], .95) / max(_pct(alone["final"], .95), 1e-9)
                print(f"{'':14s} {label}: normal clients' final p95 with / without the greedy ones = {ratio:.2f}")
            continue
        batched = await _run(engine, n, args.max_batch, meter=meter)
        print(_row(f"{n} x batched", batched), flush=True)
        if batched["lost"] == 0 and _pct(batched["final"], .95) <= args.target_ms:
            sustained = max(sustained, n)
        if args.mixed:
            mixed = await _run(engine, n, args.max_batch, meter=meter, mixed=True)
            print(_row(f"{n} x mixed", mixed))
            ratio = _pct(mixed["final"], .95) / max(_pct(batched["final"], .95), 1e-9)
            print(f"{'':14s} final p95 drafts riding with finals / as served = {ratio:.2f}")
        if args.many_drafts:
            many = await _run(engine, n, args.max_batch, meter=meter, many_drafts=True)
            print(_row(f"{n} x drafts", many))
            ratio = _pct(many["final"], .95) / max(_pct(batched["final"], .95), 1e-9)
            print(f"{'':14s} final p95 drafts batched as many as fit / as served = {ratio:.2f}")
        if args.no_single:
            continue
        single = await _run(engine, n, 1, meter=meter)
        print(_row(f"{n} x batch=1", single))
        ratio = _pct(single["final"], .95) / max(_pct(batched["final"], .95), 1e-9)
        print(f"{'':14s} final p95 batch=1 / batched = {ratio:.2f}")
    engine.close()
    if not args.greedy:
        print(f"max sustained clients: {sustained} (of {','.join(map(str, args.clients))}; no final lost, "
              f"final p95 <= {args.target_ms:.0f} ms after the end of speech)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--greedy", type=int, default=0, help="extra clients asking for --greedy-steps steps")
    p.add_argument("--greedy-steps", type=int, default=64)
    p.add_argument("--no-single", action="store_true", help="leave out the batch=1 comparison runs")
    p.add_argument("--mixed", action="store_true",
                   help="also run with drafts filling finals' batches (on CPU the server sends finals alone)")
    p.add_argument("--many-drafts", action="store_true",
                   help="also run with drafts batched as many as fit (on CPU the server runs them one by one)")
    p.add_argument("--costs", type=Path, help="a cost file: also print live engine time / its prediction")
    p.add_argument("--target-ms", type=float, default=2100.0,
                   help="final p95 after the end of speech that a sustained client count stays under")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
