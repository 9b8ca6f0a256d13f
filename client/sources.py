"""Audio sources for ``dgasr-client``: an audio file, or raw PCM on stdin (mic: :mod:`client.mic`).

How this works
--------------
Every source has a :class:`AudioFormat` (what the client declares to the server: the
sample rate and the wire encoding, always mono) and an async ``chunks()`` iterator of
``bytes``, each about ``chunk_ms`` of audio, ready to send as one binary frame.

* :class:`FileSource` and :class:`StdinSource` do their blocking reads in a daemon
  thread that hands chunks to the event loop through a small bounded hand-off
  (:func:`_iterate_in_thread`), so a slow disk or an idle pipe never stalls the websocket.
  The thread is a daemon because a read on an idle pipe cannot be interrupted; stdin is
  read with ``os.read`` on the descriptor so that thread never holds the ``sys.stdin``
  buffer lock the interpreter takes at exit.
* With ``realtime`` a :class:`Pacer` releases each chunk at the moment its last sample
  would have been captured live, which makes latency runs from a file reproducible.
* The microphone lives in :mod:`client.mic`; it shares :class:`AudioFormat`,
  :func:`downmix` and :func:`encode_samples` with the sources here.

Audio is downmixed to mono by averaging channels. Sample rates outside the protocol's
range (8-48 kHz) are resampled to 16 kHz with soxr; anything in range is sent at its
native rate because the server resamples anyway.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from server.core.audio import StreamResampler, soundfile_args
from server.core.pcm import float_to_s16
from server.wire.v1 import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Encoding

__all__ = [
    "AudioFormat",
    "SourceError",
    "DeviceError",
    "Pacer",
    "FileSource",
    "StdinSource",
    "encode_samples",
    "downmix",
]

FALLBACK_RATE = 16000  # used when a native rate is outside the protocol's range
T = TypeVar("T")


class SourceError(Exception):
    """The input cannot be read (bad file, bad raw-PCM parameters). One line of text."""


class DeviceError(SourceError):  # defined here so that catching it needs no PortAudio
    """No usable audio device (PortAudio missing, no input device, stream failed)."""


@dataclass(frozen=True)
class AudioFormat:
    """What the client declares at connect time; the audio is always mono."""

    sample_rate: int
    encoding: Encoding

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.encoding.sample_width

    def frames_per_chunk(self, chunk_ms: int) -> int:
        return max(1, self.sample_rate * chunk_ms // 1000)


def downmix(block: np.ndarray) -> np.ndarray:
    """Average a ``(frames, channels)`` block to a new mono float32 array."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=True)
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float32, copy=True)
    return block.mean(axis=1, dtype=np.float32)


def encode_samples(samples: np.ndarray, encoding: Encoding) -> bytes:
    """Mono float samples in [-1, 1] to little-endian wire bytes (s16 is clipped)."""
    if encoding is Encoding.PCM_F32LE:
        return samples.astype("<f4", copy=False).tobytes()
    return float_to_s16(samples).tobytes()


def _wire_rate(native: int) -> int:
    return native if MIN_SAMPLE_RATE <= native <= MAX_SAMPLE_RATE else FALLBACK_RATE


class _Resampler:
    """Streams mono float32 audio from ``native`` to ``_wire_rate(native)``; a no-op in range."""

    def __init__(self, native: int) -> None:
        self.rate = _wire_rate(native)
        self._stream = StreamResampler(native, self.rate)

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        out = self._stream.process(samples)
        if last:
            tail = self._stream.flush()
            out = np.concatenate([out, tail]) if len(tail) else out
        return out


class Pacer:
    """Holds each chunk back until the moment its last sample would exist live.

    Chunk *i* of a file is released at ``t0 + audio_end(i)`` where ``t0`` is the time of
    the first request: the same schedule a microphone produces, so the server sees the
    same arrival pattern and measured latencies mean the same thing.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._t0: float | None = None

    async def wait(self, audio_end: float) -> None:
        """Sleep until ``audio_end`` seconds of audio have elapsed since the first call."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        delay = self._t0 + audio_end - now
        if delay > 0:
            await self._sleep(delay)


_END = object()


async def _iterate_in_thread(produce: Callable[[], Iterator[T]], max_pending: int = 8) -> AsyncIterator[T]:
    """Run a blocking generator in a daemon thread and yield its items on the loop.

    At most ``max_pending`` items wait on the loop side (a semaphore the thread takes
    before each hand-off), so a fast producer is throttled by the consumer instead of
    filling memory. Closing the async iterator early tells the thread to stop.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    slots = threading.Semaphore(max_pending)
    stop = threading.Event()

    def hand_off(item: Any, exc: BaseException | None = None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, exc))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def work() -> None:
        try:
            for item in produce():
                slots.acquire()
                if stop.is_set() or not hand_off(item):
                    return
            hand_off(_END)
        except BaseException as exc:  # surfaced on the loop side, in order
            hand_off(_END, exc)

    threading.Thread(target=work, name="dgasr-reader", daemon=True).start()
    try:
        while True:
            item, exc = await queue.get()
            if item is _END:
                if exc is not None:
                    raise exc
                return
            slots.release()
            yield item
    finally:
        stop.set()
        slots.release()  # unblock a thread waiting for a slot so it can see `stop`


async def _paced(chunks: AsyncIterator[bytes], fmt: AudioFormat, pacer: Pacer | None) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if pacer is not None:
            await pacer.wait(sent / fmt.bytes_per_second)
        yield chunk


class FileSource:
    """Any file libsndfile reads (wav, flac, ogg, ...), downmixed, at its native rate."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_ms: int = 100,
        encoding: Encoding = Encoding.PCM_S16LE,
        realtime: bool = False,
        pacer: Pacer | None = None,
        raw_rate: int = 16000,
    ) -> None:
        """Check the file now so a bad path fails before any connection is made.

        Headerless ``.raw``/``.pcm``/``.s16`` files are 16-bit mono at ``raw_rate``.

        Raises:
            SourceError: the file is missing or not audio libsndfile can read.
        """
        import soundfile as sf

        self.path = os.fspath(path)
        self._open_args = soundfile_args(self.path, raw_rate)
        if not os.path.exists(self.path):
            raise SourceError(f"cannot read audio file {self.path!r}: no such file")
        try:
            with sf.SoundFile(self.path, **self._open_args) as info:
                rate, channels, frames = info.samplerate, info.channels, info.frames
        except (sf.SoundFileError, OSError, TypeError) as exc:
            raise SourceError(f"cannot read audio file {self.path!r}: {_reason(exc)}") from None
        if rate <= 0 or channels <= 0:
            raise SourceError(f"cannot read audio file {self.path!r}: no audio stream")
        self.native_rate = int(rate)
        self.channels = int(channels)
        self.duration = frames / rate
        self.format = AudioFormat(_wire_rate(self.native_rate), encoding)
        self.chunk_ms = chunk_ms
        self._pacer = pacer if pacer is not None else (Pacer() if realtime else None)

    def _read_blocks(self) -> Iterator[bytes]:
        import soundfile as sf

        resample = _Resampler(self.native_rate)
        frames = max(1, self.native_rate * self.chunk_ms // 1000)
        try:
            with sf.SoundFile(self.path, **self._open_args) as f:
                while True:
                    block = f.read(frames, dtype="float32", always_2d=True)
                    last = len(block) < frames
                    samples = resample(downmix(block), last=last)
                    if len(samples):
                        yield encode_samples(samples, self.format.encoding)
                    if last:
                        return
        except (sf.SoundFileError, OSError) as exc:  # a file truncated or changed under us
            raise SourceError(f"cannot read audio file {self.path!r}: {_reason(exc)}") from None

    def chunks(self) -> AsyncIterator[bytes]:
        """The file's audio as wire chunks, paced when ``realtime`` was asked for."""
        return _paced(_iterate_in_thread(self._read_blocks), self.format, self._pacer)


class StdinSource:
    """Raw mono PCM from a pipe (``arecord``, ``ffmpeg``, ``sox``), passed through as is."""

    def __init__(
        self,
        fd: int = 0,
        *,
        sample_rate: int = 16000,
        encoding: Encoding = Encoding.PCM_S16LE,
        chunk_ms: int = 100,
        realtime: bool = False,
        pacer: Pacer | None = None,
    ) -> None:
        """Raises:
        SourceError: the declared rate is outside what the protocol accepts.
        """
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise SourceError(
                f"--rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz for raw input, got {sample_rate}"
            )
        self.fd = fd
        self.format = AudioFormat(sample_rate, encoding)
        self.chunk_bytes = self.format.frames_per_chunk(chunk_ms) * encoding.sample_width
        self._pacer = pacer if pacer is not None else (Pacer() if realtime else None)

    def _read_blocks(self) -> Iterator[bytes]:
        # os.read returns whatever the pipe holds; gather it into whole chunks so the
        # server gets steady frames, and drop a torn sample at EOF.
        pending = bytearray()
        while True:
            try:
                data = os.read(self.fd, self.chunk_bytes - len(pending))
            except OSError as exc:
                raise SourceError(f"cannot read standard input: {_reason(exc)}") from None
            if not data:
                break
            pending += data
            if len(pending) >= self.chunk_bytes:
                yield bytes(pending)
                pending.clear()
        width = self.format.encoding.sample_width
        tail = len(pending) - len(pending) % width
        if tail:
            yield bytes(pending[:tail])

    def chunks(self) -> AsyncIterator[bytes]:
        """Stdin's bytes in chunk-sized frames until EOF."""
        return _paced(_iterate_in_thread(self._read_blocks), self.format, self._pacer)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__
