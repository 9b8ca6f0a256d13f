"""Audio sources of dgasr-client (file, stdin pipe, microphone) and its device/usage errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from client import cli
from client import mic as mic_module
from client.mic import MicSource
from client.sources import DeviceError, FileSource, Pacer, SourceError, StdinSource
from server.wire.v1 import Encoding

REPO = Path(__file__).resolve().parents[1]


async def _collect(chunks) -> list[bytes]:
    return [c async for c in chunks]


def _s16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def test_file_source_downmixes_and_chunks_when_wav_is_stereo(tmp_path: Path) -> None:
    """A stereo 16-bit wav is sent mono at its own rate, in 100 ms chunks, samples exact."""
    rng = np.random.default_rng(1)
    stereo = rng.integers(-20000, 20000, size=(22050 + 123, 2), dtype=np.int16)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 22050, subtype="PCM_16")

    source = FileSource(path, chunk_ms=100)
    chunks = asyncio.run(_collect(source.chunks()))

    assert (source.format.sample_rate, source.format.encoding) == (22050, Encoding.PCM_S16LE)
    assert [len(c) for c in chunks[:-1]] == [2205 * 2] * 10 and len(chunks[-1]) == 123 * 2
    expected = np.rint(stereo.astype(np.float64).mean(axis=1)).astype(np.int16)
    np.testing.assert_array_equal(_s16(b"".join(chunks)), expected)


def test_file_source_sends_float_when_flac_has_four_channels(tmp_path: Path) -> None:
    """A 4-channel flac read with pcm_f32le decodes to the channel average."""
    t = np.arange(8000) / 8000
    quad = np.stack([np.sin(2 * np.pi * f * t) * 0.4 for f in (100, 200, 300, 400)], axis=1)
    path = tmp_path / "quad.flac"
    sf.write(path, quad, 8000, subtype="PCM_16")
    stored = sf.read(path, dtype="float32")[0]

    source = FileSource(path, chunk_ms=50, encoding=Encoding.PCM_F32LE)
    chunks = asyncio.run(_collect(source.chunks()))

    assert len(chunks) == 20 and all(len(c) == 400 * 4 for c in chunks)
    got = np.frombuffer(b"".join(chunks), dtype="<f4")
    np.testing.assert_allclose(got, stored.mean(axis=1), atol=1e-6)


def test_file_source_resamples_to_16k_when_rate_is_above_protocol_range(tmp_path: Path) -> None:
    """96 kHz is more than the protocol's 48 kHz: the client resamples to 16 kHz itself."""
    path = tmp_path / "hi.wav"
    sf.write(path, np.zeros(96000, dtype=np.float32), 96000)
    source = FileSource(path)
    chunks = asyncio.run(_collect(source.chunks()))
    assert source.format.sample_rate == 16000
    assert abs(len(b"".join(chunks)) // 2 - 16000) <= 16


def test_file_source_raises_one_line_error_when_file_is_not_audio(tmp_path: Path) -> None:
    """Garbage or a missing path gives one readable line naming the file."""
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"this is not a wav file" * 10)
    for path in (bad, tmp_path / "missing.flac"):
        with pytest.raises(SourceError) as info:
            FileSource(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and "cannot read audio file" in message


def test_cli_exits_2_with_one_line_when_file_is_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command reports an unreadable file on one stderr line, exit code 2, nothing on stdout."""
    bad = tmp_path / "x.ogg"
    bad.write_bytes(b"\0" * 100)
    assert cli.main([str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("dgasr-client: cannot read audio file")


def test_pacer_releases_chunks_on_audio_schedule_when_realtime() -> None:
    """With --realtime chunk i leaves at t0 + end of its audio, measured on an injected clock."""
    now = [100.0]
    released: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    async def run() -> None:
        pacer = Pacer(clock=lambda: now[0], sleep=fake_sleep)
        for end in (0.1, 0.2, 0.3, 0.35):
            now[0] += 0.01  # reading and sending take a little time of their own
            await pacer.wait(end)
            released.append(round(now[0] - 100.0, 6))

    asyncio.run(run())
    assert released == [0.11, 0.21, 0.31, 0.36]  # t0 is the first request, at 100.01


def test_file_source_takes_real_time_when_realtime(tmp_path: Path) -> None:
    """A 0.4 s file sent with --realtime takes about 0.4 s, not the milliseconds of a read."""
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(6400, dtype=np.int16), 16000)
    start = time.monotonic()
    chunks = asyncio.run(_collect(FileSource(path, realtime=True).chunks()))
    elapsed = time.monotonic() - start
    assert len(chunks) == 4 and 0.8 * 0.4 <= elapsed < 2.0


def test_stdin_source_yields_whole_chunks_when_pipe_delivers_odd_pieces() -> None:
    """Raw PCM trickling through a pipe in odd sizes comes out as whole 100 ms frames."""
    pcm = np.arange(-8000, 8000, 3, dtype=np.int16).tobytes() + b"\x01"  # a torn last sample
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for i in range(0, len(pcm), 777):
                w.write(pcm[i : i + 777])
                time.sleep(0.001)

    threading.Thread(target=writer, daemon=True).start()
    try:
        source = StdinSource(read_fd, sample_rate=8000, chunk_ms=100)
        chunks = asyncio.run(_collect(source.chunks()))
    finally:
        os.close(read_fd)
    assert all(len(c) == 1600 for c in chunks[:-1]) and len(chunks[-1]) % 2 == 0
    assert b"".join(chunks) == pcm[:-1]


def test_stdin_source_rejects_rate_when_outside_protocol_range() -> None:
    """A raw-PCM rate the server cannot accept is a usage error before connecting."""
    with pytest.raises(SourceError, match="--rate must be between 8000 and 48000"):
        StdinSource(sample_rate=96000)


class FakeFlags:
    input_overflow = False


class FakeInputStream:
    """Stands in for sounddevice.InputStream where a test must time PortAudio's thread itself.

    A real device (tests/test_client_mic.py feeds one through ALSA) delivers blocks on
    its own clock; these tests need blocks pushed while the loop is stalled, or the stream
    ending as if unplugged, at an exact moment.

    Same constructor keywords and ``callback(indata, frames, time, status)`` contract;
    ``push`` plays the part of PortAudio's thread delivering one block, reusing one
    buffer as PortAudio does.
    """

    instances: list[FakeInputStream] = []

    def __init__(self, *, samplerate, blocksize, device, channels, dtype, callback, finished_callback=None):
        self.samplerate, self.blocksize, self.channels, self.dtype = samplerate, blocksize, channels, dtype
        self.callback, self.finished_callback = callback, finished_callback
        self.buffer = np.zeros((blocksize, channels), dtype=dtype)
        self.active = False
        FakeInputStream.instances.append(self)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        if self.active and self.finished_callback:
            self.finished_callback()
        self.active = False

    def close(self) -> None:
        self.active = False

    def push(self, left: float, right: float) -> None:
        self.buffer[:, 0], self.buffer[:, 1] = left, right
        self.callback(self.buffer, self.blocksize, None, FakeFlags())


def _mic(**kwargs) -> MicSource:
    return MicSource(None, sample_rate=16000, channels=2, stream_factory=FakeInputStream, **kwargs)


def test_mic_source_delivers_blocks_in_order_when_fed_from_audio_thread() -> None:
    """Blocks pushed on another thread arrive downmixed, in order, each its own copy."""
    values = [(i / 100, -i / 200) for i in range(30)]

    async def run() -> list[bytes]:
        mic = _mic(chunk_ms=20)
        async with mic:
            stream = FakeInputStream.instances[-1]
            assert (stream.samplerate, stream.blocksize, stream.channels) == (16000, 320, 2)
            threading.Thread(target=lambda: [stream.push(*v) for v in values] and None).start()
            got = []
            async for chunk in mic.chunks():
                got.append(chunk)
                if len(got) == len(values):
                    mic.stop()
            return got

    chunks = asyncio.run(run())
    means = [(a + b) / 2 for a, b in values]
    assert [int(_s16(c)[0]) for c in chunks] == [int(np.rint(np.float32(m) * 32768)) for m in means]
    assert all(len(c) == 640 and len(set(_s16(c))) == 1 for c in chunks)


def test_mic_source_counts_overflow_without_blocking_when_consumer_stalls() -> None:
    """A stalled loop makes the callback drop and count blocks; it never waits."""
    notices: list[str] = []

    async def run() -> tuple[float, list[bytes]]:
        mic = _mic(chunk_ms=100, queue_seconds=0.5, on_overflow=notices.append)
        mic.start()
        stream = FakeInputStream.instances[-1]
        start = time.perf_counter()
        for i in range(20):  # the loop is busy right here, so nothing is consumed
            stream.push(i / 40, i / 40)
        elapsed = time.perf_counter() - start
        assert mic.dropped_blocks == 15
        mic.stop()
        return elapsed, await _collect(mic.chunks())

    elapsed, chunks = asyncio.run(run())
    assert elapsed < 0.5
    assert [int(_s16(c)[0]) for c in chunks] == [int(np.rint(np.float32(i / 40) * 32768)) for i in range(5)]
    assert notices == ["audio input overflow: 15 blocks (1.5 s) dropped so far; the client is falling behind"]


def test_list_input_devices_explains_when_portaudio_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the PortAudio library the error says what to install, on one line."""
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` fail
    with pytest.raises(DeviceError) as info:
        mic_module.list_input_devices()
    assert "PortAudio" in str(info.value) and "libportaudio2" in str(info.value) and "\n" not in str(info.value)


def _run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_cli_help_lists_options_and_exit_codes_when_asked() -> None:
    """`python -m client --help` documents every option and the exit codes."""
    result = _run_client("--help")
    assert result.returncode == 0
    for option in ("--url", "--language", "--draft-steps", "--final-steps", "--no-interim", "--format",
                   "--output", "--realtime", "--rate", "--encoding", "--device", "--list-devices", "--chunk-ms",
                   "--mic", "exit codes:", "server unreachable"):
        assert option in result.stdout


def test_cli_list_devices_exits_3_with_message_when_no_input_device() -> None:
    """With no capture device (as on CI) --list-devices says so on one line, exit code 3."""
    try:
        mic_module.list_input_devices()
        pytest.skip("this machine has an audio input device")
    except DeviceError:
        pass
    result = _run_client("--list-devices")
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no audio input devices" in result.stderr


def test_cli_rejects_two_inputs_when_file_and_mic_given() -> None:
    """Usage errors exit 2 before anything is opened."""
    result = _run_client("--mic", "some.wav")
    assert result.returncode == 2 and "exactly one input" in result.stderr


def test_mic_source_raises_device_error_when_stream_ends_on_its_own() -> None:
    """An unplugged device (PortAudio finishes the stream) ends chunks() with a DeviceError, blocks kept."""

    async def run() -> list[bytes]:
        mic = _mic(chunk_ms=100)
        mic.start()
        stream = FakeInputStream.instances[-1]
        stream.push(0.5, 0.5)
        stream.finished_callback()  # PortAudio's thread: the device went away
        got = []
        with pytest.raises(DeviceError, match="stopped delivering audio"):
            async for chunk in mic.chunks():
                got.append(chunk)
        return got

    chunks = asyncio.run(run())
    assert len(chunks) == 1 and int(_s16(chunks[0])[0]) == 16384
