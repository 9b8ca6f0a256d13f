"""dgasr-client --mic end to end against the real server: a PortAudio capture device, and reconnects.

This machine has no sound card, but PortAudio can still capture: ALSA's ``file`` plugin
reads a capture stream's samples from a file (``infile``) over the ``null`` PCM. The
null PCM has no clock of its own, so the infile is a FIFO the test writes at real-time
pace, and PortAudio's reads wait on it like on a sound card. A private ``.asoundrc`` in
a temporary HOME defines the device, so the client under test runs unchanged, as a
subprocess: ``--list-devices`` lists it and ``--mic --device`` captures from it.

The reconnect test injects a scripted capture stream instead (see :class:`ScriptedStream`),
because it must stop the server at an exact point of the audio from inside the process.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soxr
from audio_fixtures import SAMPLE_RATE, speech_with_pauses
from clientkit import (
    ServerThread,
    assert_near,
    client_process,
    closes,
    finals,
    parse_jsonl,
    spans,
)
from wsclient import assert_event_order

from client import cli
from client.mic import MicSource
from server.wire.v1 import Ready, ServerMessage

ASOUNDRC = """\
pcm.dgasrmic {{
    type plug
    slave {{
        pcm "dgasrfifo"
        format S16_LE
        channels 1
    }}
}}
pcm.dgasrfifo {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
"""


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


class FifoMicrophone:
    """An ALSA capture device ``dgasrmic`` whose samples this object writes into a FIFO in real time."""

    def __init__(self, home: Path) -> None:
        self.fifo = home / "mic.fifo"
        os.mkfifo(self.fifo)
        (home / ".asoundrc").write_text(ASOUNDRC.format(fifo=self.fifo))
        # Held open for writing all along: PortAudio opens the infile when it probes the
        # devices, and opening a FIFO for reading waits until it has a writer.
        self.fd = os.open(self.fifo, os.O_RDWR)
        self.env = {k: v for k, v in os.environ.items() if k != "ALSA_CONFIG_PATH"} | {"HOME": str(home)}
        self.played = threading.Event()

    def prime(self, pcm: bytes) -> None:
        """Queue the first whole blocks before the client opens the device.

        PortAudio's first reads must find data: when they find the FIFO empty, ALSA hands
        out blocks of stale memory (loud noise) that were never written.
        """
        os.write(self.fd, pcm)

    def play(self, pcm: bytes, rate: int, keep_going: Callable[[], bool]) -> None:
        """Write ``pcm`` (s16le mono) in 100 ms blocks at real-time pace, then silence while ``keep_going()``.

        Silence keeps PortAudio's read from waiting forever, so the client can stop the stream.
        """
        block = rate // 10 * 2
        start, written = time.monotonic(), 0
        while written < len(pcm) or keep_going():
            if written >= len(pcm):
                self.played.set()
            os.write(self.fd, pcm[written : written + block].ljust(block, b"\0"))
            written += block
            time.sleep(max(0.0, start + written / (2 * rate) - time.monotonic()))

    def close(self) -> None:
        os.close(self.fd)


def _wait_for_line(stream, prefix: str, limit: int = 50) -> list[str]:
    lines = []
    while len(lines) < limit:
        line = stream.readline()
        lines.append(line)
        if not line or line.startswith(prefix):
            break
    return lines


def test_cli_mic_transcribes_an_alsa_capture_device_when_run_with_device(server: ServerThread, tmp_path: Path) -> None:
    """--list-devices shows the FIFO-fed ALSA device; --mic --device captures two sentences; Ctrl-C, exit 0."""
    mic = FifoMicrophone(tmp_path)
    try:
        listing = client_process("--list-devices", env=mic.env)
        out, err = listing.communicate(timeout=30)
        assert listing.returncode == 0, err
        line = next(line for line in out.splitlines() if "dgasrmic" in line)
        rate = int(float(line.split(", ")[1].split(" Hz")[0]))  # "  0  dgasrmic  [128 ch, 44100 Hz]"

        audio, truth = speech_with_pauses([0.5, "Good morning.", 0.8, "See you tomorrow.", 0.9])
        pcm = (np.clip(soxr.resample(audio, SAMPLE_RATE, rate), -1, 1) * 32767).astype("<i2").tobytes()
        head = 3 * (rate // 10) * 2  # 0.3 s of the leading pause, three whole blocks
        mic.prime(pcm[:head])
        proc = client_process("--url", server.url, "--mic", "--device", "dgasrmic", "--format", "jsonl", "-v",
                              env=mic.env)
        try:
            lines = _wait_for_line(proc.stderr, "dgasr-client: connected")
            assert lines[-1].startswith("dgasr-client: connected"), lines

            def running() -> bool:
                return proc.poll() is None

            player = threading.Thread(target=mic.play, args=(pcm[head:], rate, running), daemon=True)
            player.start()
            assert mic.played.wait(30)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            player.join(5)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        mic.close()
    assert proc.returncode == 0, err
    events = parse_jsonl(out)
    assert_event_order(events)
    assert (events[0].sample_rate, events[-1].reason) == (rate, "eos")
    assert_near(spans(events), truth)


# ---- reconnects, with an injected capture stream -----------------------------------


class ScriptedStream:
    """``sounddevice.InputStream``'s contract (same keywords; ``callback(indata, frames, time, status)``
    from its own thread) delivering a recording at ``speed`` times real time, then silence until
    stopped. ``cues`` run, each on a thread of its own, once the audio passes their time.

    Injected instead of the FIFO device above because the test must act at exact points of
    the audio (stop the server mid-sentence) and runs the client in-process to do so.
    """

    def __init__(self, audio: np.ndarray, speed: float, cues: list[tuple[float, Callable[[], None]]], *,
                 samplerate, blocksize, device, channels, dtype, callback, finished_callback) -> None:
        assert (samplerate, channels, dtype) == (SAMPLE_RATE, 1, "float32")
        self.audio, self.speed, self.cues = audio, speed, sorted(cues, key=lambda c: c[0])
        self.blocksize, self.callback = blocksize, callback
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        start, sent, cues = time.monotonic(), 0, list(self.cues)
        while not self.stopped.is_set():
            block = np.zeros((self.blocksize, 1), np.float32)
            piece = self.audio[sent : sent + self.blocksize]
            block[: len(piece), 0] = piece
            self.callback(block, self.blocksize, None, None)
            sent += self.blocksize
            while cues and sent / SAMPLE_RATE >= cues[0][0]:
                threading.Thread(target=cues.pop(0)[1], daemon=True).start()
            self.stopped.wait(max(0.0, start + sent / SAMPLE_RATE / self.speed - time.monotonic()))

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.stopped.set()


def _sessions(events: list[ServerMessage]) -> list[list[ServerMessage]]:
    """Split a transcript at each ``ready``; segment ids of later sessions back to 0 for the order check."""
    out: list[list[ServerMessage]] = []
    for m in events:
        if isinstance(m, Ready):
            out.append([])
        out[-1].append(m)
    base = 0
    for session in out:
        if base:
            session[:] = [dataclasses.replace(m, segment=m.segment - base) if hasattr(m, "segment") else m
                          for m in session]
        base += closes(session)[0].segments
    return out


def test_cli_mic_reconnects_and_transcribes_the_outage_when_server_restarts_on_its_port(
    tiny_engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Server stopped mid-sentence (closed: shutdown) and back 1 s later: finals cover all speech, one timeline."""
    audio, truth = speech_with_pauses([0.3, "Hello there.", 0.7, "The quick brown fox jumps over the lazy dog.", 0.7,
                                       "Good morning.", 0.8])
    server = ServerThread(tiny_engine)
    stop_at = truth[1][0] + 0.8  # audio seconds captured when the server goes away
    back = threading.Event()
    streams: list[ScriptedStream] = []

    def outage() -> None:
        server.stop()
        time.sleep(1.0)
        server.start()  # the same port
        back.set()

    def ctrl_c_once_reconnected() -> None:
        deadline = time.monotonic() + 15
        while not (back.is_set() and server.sessions()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not streams[0].stopped.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def factory(**kwargs) -> ScriptedStream:
        # Twice real time keeps the test short; the client cannot tell.
        cues = [(stop_at, outage), (len(audio) / SAMPLE_RATE, ctrl_c_once_reconnected)]
        streams.append(ScriptedStream(audio, 2.0, cues, **kwargs))
        return streams[-1]

    class InjectedMic(MicSource):
        def __init__(self, device, **kwargs) -> None:
            super().__init__(device, sample_rate=SAMPLE_RATE, channels=1, stream_factory=factory, **kwargs)

    monkeypatch.setattr(cli, "MicSource", InjectedMic)
    try:
        code = cli.main(["--url", server.url, "--mic", "--format", "jsonl"])
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 0, err
    notices = err.splitlines()  # the server is down for 1 s: the first retry fails, the backoff doubles
    assert notices[0].startswith("dgasr-client: server ended the session (shutdown); "
                                 "reconnecting in 0.5 s (attempt 1/5)")
    assert notices[1].startswith("dgasr-client: cannot reach server")
    assert "reconnecting in 1.0 s (attempt 2/5)" in notices[1]
    events = parse_jsonl(out)
    first, second = _sessions(events)
    for session in (first, second):
        assert_event_order(session)
    assert [c.reason for c in closes(events)] == ["shutdown", "eos"]
    found = finals(events)
    assert [f.segment for f in found] == list(range(4))
    s1, s2a, s2b, s3 = spans(events)
    assert len(finals(second)) == 2  # the rest of sentence two and sentence three: spoken while it was down
    assert_near([s1, (s2a[0], s2b[1]), s3], truth)
    assert stop_at - 0.3 <= s2a[1] <= stop_at + 0.8, (s2a, stop_at)
    assert -0.15 <= s2b[0] - s2a[1] <= 0.35, (s2a, s2b)  # replay resumes where the shutdown final ended
