#!/usr/bin/env python
"""Fan-out cost of a room: one publisher's final latency alone, then with many subscribers.

Runs a real dgasr server in this process (its own thread and event loop) and real
websocket clients: the publisher here, the subscribers in a second process (so their own
message handling does not compete with the server for this process's interpreter). The publisher streams the same speech at real time in both runs; its
latency is measured where a user feels it: from the ``speech_stopped`` it receives to
the segment's ``final``. In the second run ``--subscribers`` readers join the room first,
``--stalled`` of them never read a byte (their TCP windows fill, then their server-side
outboxes). Printed: p50/p95 of that latency per run, their ratio, what the readers got,
and the stalled readers' server-side queue sizes (bounded by the hub's limits).

    python scripts/bench_rooms.py --subscribers 50 --stalled 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from audio_fixtures import speech_with_pauses  # noqa: E402
from clientkit import ServerThread  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from wsclient import encode  # noqa: E402

from server.service.rooms import SUBSCRIBER_QUEUE  # noqa: E402
from server.wire.v1 import parse_server_message  # noqa: E402

SENTENCES = ["The quarterly numbers are in and they look good.", "Sales grew in every region this year.",
             "We will hire two more engineers next month.", "Questions can go to the shared channel.",
             "That is all for today, thank you."]


async def publish(url: str, audio, room: str) -> list[float]:
    """Real-time stream into ``room``; seconds from each speech_stopped to its final."""
    stopped: dict[int, float] = {}
    waits: list[float] = []
    async with connect(f"{url}/v1/listen?sample_rate=16000&room={room}&speaker=host") as ws:
        await ws.recv()

        async def send() -> None:
            pcm = encode(audio)
            for i in range(0, len(pcm), 3200):
                await ws.send(pcm[i : i + 3200])
                await asyncio.sleep(0.1)
            await ws.send('{"type": "eos"}')

        sender = asyncio.create_task(send())
        async for raw in ws:
            message = parse_server_message(raw)
            if message.type == "speech_stopped":
                stopped[message.segment] = time.perf_counter()
            elif message.type == "final" and message.segment in stopped:
                waits.append(time.perf_counter() - stopped[message.segment])
        await sender
    return waits


async def reader(url: str, room: str, joined: asyncio.Event, counts: list[int], stop: asyncio.Event) -> None:
    async with connect(f"{url}/v1/rooms/{room}") as ws:
        await ws.recv()
        joined.set()
        finals = 0
        while not stop.is_set():
            try:
                if '"final"' in await asyncio.wait_for(ws.recv(), 0.2):
                    finals += 1
            except TimeoutError:
                continue
        counts.append(finals)


async def stalled(url: str, room: str, joined: asyncio.Event, stop: asyncio.Event) -> None:
    async with connect(f"{url}/v1/rooms/{room}", max_queue=1) as ws:  # reads one frame, then never again
        joined.set()
        await stop.wait()
        ws.transport.abort()


async def _crowd(url: str, room: str, subscribers: int, stalled_count: int, joined, stop) -> list[int]:
    """The subscribers (in the child process): join, read (or not) until ``stop``; finals each reader got."""
    here_stop = asyncio.Event()
    flags = [asyncio.Event() for _ in range(subscribers)]
    counts: list[int] = []
    tasks = [asyncio.create_task(stalled(url, room, flags[i], here_stop) if i < stalled_count
                                 else reader(url, room, flags[i], counts, here_stop)) for i in range(subscribers)]
    waiting = asyncio.gather(*(f.wait() for f in flags))
    done, _ = await asyncio.wait({waiting, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:  # a subscriber failed to join: say why instead of waiting forever
        next(iter(done)).result()
    joined.set()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    here_stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def _crowd_process(url, room, subscribers, stalled_count, joined, stop, out) -> None:
    out.put(asyncio.run(_crowd(url, room, subscribers, stalled_count, joined, stop)))


async def run(url: str, audio, room: str, subscribers: int, stalled_count: int, server: ServerThread):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    joined, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    child = None
    if subscribers:
        child = ctx.Process(target=_crowd_process, args=(url, room, subscribers, stalled_count, joined, stop, out))
        child.start()
        while not joined.is_set():
            if not child.is_alive():
                raise RuntimeError("the subscribers' process failed")
            await asyncio.sleep(0.05)
    waits = await publish(url, audio, room)
    await asyncio.sleep(1.0)
    live = server.server.hub._live.get(room)
    queued = sorted(len(s.outbox) for s in live.subscribers.values()) if live else []
    queued_bytes = max((s.outbox.size_bytes for s in live.subscribers.values()), default=0) if live else 0
    stop.set()
    counts = out.get(timeout=60) if child else []
    if child:
        child.join(30)
    return waits, counts, queued, queued_bytes


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="times the five sentences are spoken per run")
    args = parser.parse_args()
    from server.cli.server import cpu_threads
    from server.engine import Engine, load_model

    engine = Engine(lambda: load_model(args.model, "cpu"), threads=cpu_threads()).start()
    engine.wait_ready(300)
    parts: list = [0.5]
    for sentence in SENTENCES * args.repeat:
        parts += [sentence, 0.9]
    audio, truth = speech_with_pauses(parts)
    # every client comes from 127.0.0.1 here: lift the per-address bound above the crowd
    server = ServerThread(engine, max_connections_per_address=args.subscribers + 8)
    try:
        alone, _, _, _ = asyncio.run(run(server.url, audio, "alone", 0, 0, server))
        crowd, counts, queued, queued_bytes = asyncio.run(
            run(server.url, audio, "crowd", args.subscribers, args.stalled, server))
    finally:
        server.close()
        engine.close()
    print(f"model {args.model}, {len(truth)} sentences, {len(audio) / 16000:.0f} s of speech at real time")
    print(f"{'run':32s} {'finals':>6s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, waits in (("publisher alone", alone), (f"+ {args.subscribers} subscribers ({args.stalled} stalled)",
                                                     crowd)):
        print(f"{name:32s} {len(waits):6d} {pct(waits, 50) * 1000:8.0f} {pct(waits, 95) * 1000:8.0f}")
    print(f"ratio p50 {pct(crowd, 50) / pct(alone, 50):.2f}x, p95 {pct(crowd, 95) / pct(alone, 95):.2f}x")
    print(f"reading subscribers: {len(counts)}, finals each: min {min(counts, default=0)} max {max(counts, default=0)}")
    print(f"stalled subscribers' server queues: largest {max(queued, default=0)} items / {queued_bytes} bytes "
          f"(bound {SUBSCRIBER_QUEUE[0]} items / {SUBSCRIBER_QUEUE[1]} bytes)")


if __name__ == "__main__":
    main()
