"""Microphone capture for ``dgasr-client`` through PortAudio (``sounddevice``).

How this works
--------------
:class:`MicSource` opens a PortAudio input stream on the chosen device at the device's
own default rate, with up to two channels, and yields mono wire chunks like the other
sources in :mod:`client.sources`. The stream is built by ``stream_factory`` (by default
``sounddevice.InputStream``), so tests can inject an object with the same contract where
they must decide exactly when blocks arrive (a stalled loop, an unplugged device).

PortAudio calls the audio callback on its own thread, and the callback must never block
or PortAudio itself drops input. So it only downmixes (which copies: PortAudio reuses
``indata``), appends to a bounded :class:`_CaptureQueue` under a short lock, and wakes
the loop with ``call_soon_threadsafe``. When the loop falls behind, the queue drops the
newest block and counts it; ``on_overflow`` reports the count (on stderr, in the CLI), so
lost audio is never silent. Keeping audio across reconnects is the session's job
(:class:`client.feeds.Backlog`), which drains this queue whatever the connection does.

``sounddevice`` is imported lazily, so files and stdin work on machines without
PortAudio; device problems raise :class:`DeviceError` with one line of text.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.wire.v1 import Encoding

from .sources import (
    AudioFormat,
    DeviceError,
    _reason,
    _Resampler,
    _wire_rate,
    downmix,
    encode_samples,
)

__all__ = ["InputDevice", "MicSource", "StreamFactory", "list_input_devices", "query_input_device"]

REPORT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_samplerate: float
    is_default: bool = False


def _import_sounddevice() -> Any:
    """Import sounddevice lazily: file and stdin input must work without PortAudio."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise DeviceError(
            f"cannot use audio devices: PortAudio is not available ({_reason(exc)}); "
            "install it (Debian/Ubuntu: apt install libportaudio2)"
        ) from None
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """All devices with input channels. Raises :class:`DeviceError` when there are none."""
    sd = _import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {_reason(exc)}") from None
    found = [
        InputDevice(int(d["index"]), d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]),
                    int(d["index"]) == default_in)
        for d in devices
        if d["max_input_channels"] > 0
    ]
    if not found:
        raise DeviceError("no audio input devices found (no sound card, or no access to it)")
    return found


def query_input_device(device: int | str | None) -> InputDevice:
    """Resolve ``--device`` (index, name substring, or None for the default)."""
    sd = _import_sounddevice()
    try:
        if device is None and sd.default.device[0] < 0:  # PortAudio's "no default input"
            raise DeviceError("no audio input device found (no sound card, or no access to it)")
        d = sd.query_devices(device, kind="input")
    except (sd.PortAudioError, ValueError) as exc:
        what = "the default input device" if device is None else f"input device {device!r}"
        raise DeviceError(f"cannot use {what}: {_reason(exc)}; see --list-devices") from None
    return InputDevice(int(d["index"]), d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]))


class _CaptureQueue:
    """Bounded hand-off from the audio thread to the loop; ``put`` never blocks.

    A full queue drops the incoming block and counts it: the audio thread must return
    quickly or PortAudio itself overflows. At most one wake-up is scheduled at a time, so
    even a stalled loop receives a bounded number of callbacks.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_blocks: int) -> None:
        self._loop = loop
        self._max = max(1, max_blocks)
        self._blocks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wakeup_pending = False
        self._closed = False
        self.dropped = 0

    def put_threadsafe(self, block: np.ndarray) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._blocks) >= self._max:
                self.dropped += 1
                return
            self._blocks.append(block)
        self._wake()

    def close_threadsafe(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _on_wake(self) -> None:
        with self._lock:
            self._wakeup_pending = False
        self._ready.set()

    async def get(self) -> np.ndarray | None:
        """The oldest block, or None once closed and drained."""
        while True:
            with self._lock:
                if self._blocks:
                    return self._blocks.popleft()
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()


StreamFactory = Callable[..., Any]


class MicSource:
    """Live capture from a PortAudio input device, mono, at the device's native rate.

    ``stream_factory`` is called like ``sounddevice.InputStream(samplerate=, blocksize=,
    device=, channels=, dtype="float32", callback=, finished_callback=)`` and must return
    an object with ``start()``, ``stop()`` and ``close()`` that calls
    ``callback(indata, frames, time, status)`` with ``(frames, channels)`` float32 blocks.
    Tests inject a scripted stream there to time blocks exactly.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        chunk_ms: int = 100,
        encoding: Encoding = Encoding.PCM_S16LE,
        queue_seconds: float = 5.0,
        sample_rate: int | None = None,
        channels: int | None = None,
        stream_factory: StreamFactory | None = None,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        """Resolve the device now (unless rate and channels are given) so errors come early.

        ``on_overflow`` receives a one-line notice whenever audio was lost, at most every
        ``REPORT_INTERVAL_S`` seconds while the loss goes on.

        Raises:
            DeviceError: PortAudio is missing or the device cannot be used.
        """
        if sample_rate is None or channels is None:
            info = query_input_device(device)
            sample_rate = sample_rate or int(info.default_samplerate)
            # Virtual devices (pulse, pipewire) report 32-64 channels; two are enough to
            # downmix a real microphone and keep the callback cheap.
            channels = channels or max(1, min(info.channels, 2))
        self.device = device
        self.native_rate = int(sample_rate)
        self.channels = int(channels)
        self.format = AudioFormat(_wire_rate(self.native_rate), encoding)
        self.blocksize = max(1, self.native_rate * chunk_ms // 1000)
        self._max_blocks = max(1, int(queue_seconds * 1000 / chunk_ms))
        self._factory = stream_factory
        self._on_overflow = on_overflow
        self._queue: _CaptureQueue | None = None
        self._stream: Any = None
        self._reported = (0, 0)  # (dropped_blocks, portaudio_overflows) last told to the user
        self._last_report = -REPORT_INTERVAL_S
        self._failed = False
        self.portaudio_overflows = 0

    @property
    def dropped_blocks(self) -> int:
        """Blocks lost because the loop fell behind (client side, not PortAudio's)."""
        return self._queue.dropped if self._queue is not None else 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy (indata is reused), hand off, return. Nothing here waits.
        if getattr(status, "input_overflow", False):
            self.portaudio_overflows += 1
        assert self._queue is not None
        self._queue.put_threadsafe(downmix(indata))

    def _finished(self) -> None:
        # PortAudio ended the stream. Unless stop() asked for it (it clears _stream
        # first), the device went away: chunks() reports that after the last block.
        if self._stream is not None:
            self._failed = True
        if self._queue is not None:
            self._queue.close_threadsafe()

    def start(self) -> None:
        """Open and start the input stream; call from inside the running event loop.

        Raises:
            DeviceError: the stream could not be opened or started.
        """
        self._queue = _CaptureQueue(asyncio.get_running_loop(), self._max_blocks)
        factory = self._factory or _import_sounddevice().InputStream
        try:
            self._stream = factory(
                samplerate=self.native_rate,
                blocksize=self.blocksize,
                device=self.device,
                channels=self.channels,
                dtype="float32",
                callback=self._callback,
                finished_callback=self._finished,
            )
            self._stream.start()
        except Exception as exc:  # sounddevice raises PortAudioError, ValueError, ...
            self._stream = None
            raise DeviceError(f"cannot open the input device: {_reason(exc)}") from None

    def stop(self) -> None:
        """Stop capturing; ``chunks()`` ends once the blocks already captured are out."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # a device that vanished cannot be stopped twice
                pass
        if self._queue is not None:
            self._queue.close_threadsafe()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Captured audio as wire chunks, until :meth:`stop` (or the device goes away)."""
        if self._queue is None:
            self.start()
        assert self._queue is not None
        resample = _Resampler(self.native_rate)
        while (block := await self._queue.get()) is not None:
            self._report_overflow()
            samples = resample(block)
            if len(samples):
                yield encode_samples(samples, self.format.encoding)
        self._report_overflow(final=True)
        if self._failed:
            raise DeviceError("the input device stopped delivering audio (unplugged?)")

    def _report_overflow(self, final: bool = False) -> None:
        counts = (self.dropped_blocks, self.portaudio_overflows)
        now = time.monotonic()
        if counts == self._reported or self._on_overflow is None:
            return
        if not final and now - self._last_report < REPORT_INTERVAL_S:
            return  # a client that stays behind would otherwise print a line per block
        dropped, overflows = counts
        if dropped != self._reported[0]:
            seconds = dropped * self.blocksize / self.native_rate
            self._on_overflow(f"audio input overflow: {dropped} blocks ({seconds:.1f} s) dropped so far; "
                              "the client is falling behind")
        if overflows != self._reported[1]:
            self._on_overflow(f"PortAudio reported {overflows} input overflows so far; the system is too busy")
        self._reported, self._last_report = counts, now

    async def __aenter__(self) -> MicSource:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
