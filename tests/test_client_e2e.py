"""dgasr-client end to end: files, stdin pipes, output formats, pacing and Ctrl-C against the real server.

The server is the real one (tiny-random engine: real segmentation and timing, noise for
text, and deterministic finals since each segment's final has its own seed), served from
a background thread (:class:`clientkit.ServerThread`); the client runs as ``cli.main`` in
the main thread or as ``python -m client`` in a subprocess where a pipe or a signal is
part of the test. Speech is espeak-ng with known pauses, so every final is checked
against where the sentences really are.
"""

from __future__ import annotations

import html
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
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
    write_wav,
)
from wsclient import assert_event_order

from client import cli
from server.wire.v1 import Final, Partial, Ready

SENTENCES = [0.3, "Hello there, how are you today?", 0.9, "The quick brown fox jumps over the lazy dog.", 0.9,
             "Please call me back tomorrow morning.", 0.8]
SHORT = [0.3, "Hello there.", 0.8, "Good morning to you.", 0.7]


@pytest.fixture
def server(tiny_engine):
    srv = ServerThread(tiny_engine)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[tuple[float, float]]]:
    return speech_with_pauses(SENTENCES)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("variant", ["wav-16k-mono", "flac-44k-stereo"])
def test_cli_writes_jsonl_events_in_protocol_order_when_streaming_a_file(
    server: ServerThread, speech, tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    """A three-sentence file gives ready, one ordered event group per sentence and closed (eos) as jsonl."""
    audio, truth = speech
    if variant == "wav-16k-mono":
        path, rate = write_wav(tmp_path / "talk.wav", audio), SAMPLE_RATE
    else:  # the client downmixes and the server resamples: the same segments must come out
        rate = 44100
        hi = soxr.resample(audio, SAMPLE_RATE, rate).astype(np.float32)
        path = tmp_path / "talk.flac"
        sf.write(path, np.stack([hi, 0.5 * hi], axis=1), rate, subtype="PCM_16")

    code, out, err = _run(capsys, "--url", server.url, "--format", "jsonl", str(path))

    assert code == 0 and err == ""
    events = parse_jsonl(out)
    assert_event_order(events)
    ready, closed = events[0], events[-1]
    assert isinstance(ready, Ready) and (ready.sample_rate, ready.encoding, ready.interim_results) == (
        rate, "pcm_s16le", True)
    assert closed.reason == "eos" and closed.segments == 3
    assert closed.audio_seconds == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.01)
    assert_near(spans(events), truth)


_CUE_TIME = r"(\d\d):(\d\d):(\d\d)[{sep}](\d\d\d)"


def _parse_cues(text: str, vtt: bool) -> list[tuple[int, int, str]]:
    """Strictly parse an SRT or WebVTT file into (start_ms, end_ms, text) cues."""
    if vtt:
        assert text.startswith("WEBVTT\n\n")
        text = text[len("WEBVTT\n\n"):]
    stamp = _CUE_TIME.format(sep="." if vtt else ",")
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "the file ends with a complete cue"
    cues = []
    for number, block in enumerate(blocks[:-1], 1):
        index, timing, *lines = block.split("\n")
        match = re.fullmatch(f"{stamp} --> {stamp}", timing)
        assert index == str(number) and match, block
        t = [int(g) for g in match.groups()]
        start, end = (((t[i] * 60 + t[i + 1]) * 60 + t[i + 2]) * 1000 + t[i + 3] for i in (0, 4))
        assert start <= end and 1 <= len(lines) <= 2 and all(lines), block
        cue_text = " ".join(html.unescape(line) if vtt else line for line in lines)
        cues.append((start, end, cue_text))
    return cues


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _cues_per_final(cues: list[tuple[int, int, str]], finals_: list[Final]) -> list[list[tuple[int, int, str]]]:
    """Assign consecutive cues to each non-empty final by their text."""
    groups, rest = [], list(cues)
    for final in finals_:
        want, group = _squeeze(final.text), []
        while rest and _squeeze("".join(c[2] for c in group)) != want:
            group.append(rest.pop(0))
        assert _squeeze("".join(c[2] for c in group)) == want, (final, group)
        groups.append(group)
    assert not rest, rest
    return groups


def test_cli_writes_text_srt_and_vtt_matching_the_finals_when_output_is_a_file(
    server: ServerThread, speech, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """text: a line per final; --output srt/vtt: valid files whose cues span each final exactly, with its text."""
    path = write_wav(tmp_path / "talk.wav", speech[0])
    code, out, _ = _run(capsys, "--url", server.url, "--format", "jsonl", "--no-interim", str(path))
    reference = [f for f in finals(parse_jsonl(out)) if f.text.strip()]
    assert code == 0 and len(reference) == 3

    code, out, err = _run(capsys, "--url", server.url, "--format", "text", str(path))
    assert (code, err) == (0, "") and out == "".join(" ".join(f.text.split()) + "\n" for f in reference)

    for fmt in ("srt", "vtt"):
        target = tmp_path / f"talk.{fmt}"
        code, out, err = _run(capsys, "--url", server.url, "--format", fmt, "-o", str(target), str(path))
        assert (code, out, err) == (0, "", "")
        cues = _parse_cues(target.read_text(encoding="utf-8"), vtt=fmt == "vtt")
        for final, group in zip(reference, _cues_per_final(cues, reference)):
            assert group[0][0] == round(final.start * 1000) and group[-1][1] == round(final.end * 1000)
            assert all(a[1] == b[0] for a, b in zip(group, group[1:])), group  # back to back


@pytest.mark.parametrize(("encoding", "sox_format"), [("pcm_s16le", ["-e", "signed", "-b", "16"]),
                                                       ("pcm_f32le", ["-e", "floating-point", "-b", "32"])])
def test_cli_transcribes_raw_stdin_like_the_file_when_piped_from_sox(
    server: ServerThread, speech, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str,
    sox_format: list[str],
) -> None:
    """`sox ... | dgasr-client - --rate 8000` gives the same finals as the same 8 kHz audio as a file."""
    wav16 = write_wav(tmp_path / "talk16.wav", speech[0])
    wav8 = tmp_path / "talk8.wav"
    subprocess.run(["sox", str(wav16), "-r", "8000", str(wav8)], check=True, timeout=30)
    code, out, _ = _run(capsys, "--url", server.url, "--format", "jsonl", "--no-interim", str(wav8))
    from_file = finals(parse_jsonl(out))
    assert code == 0 and len(from_file) == 3

    sox = subprocess.Popen(["sox", str(wav8), "-t", "raw", *sox_format, "-"], stdout=subprocess.PIPE)
    client = client_process("--url", server.url, "--format", "jsonl", "--no-interim", "--rate", "8000",
                            "--encoding", encoding, "-", stdin=sox.stdout)
    sox.stdout.close()  # the client holds the read end now; sox sees EPIPE if the client dies
    out, err = client.communicate(timeout=60)
    assert sox.wait(10) == 0 and client.returncode == 0, err
    events = parse_jsonl(out)
    assert_event_order(events)
    assert (events[0].sample_rate, events[0].encoding) == (8000, encoding)
    assert [(f.start, f.end, f.text) for f in finals(events)] == [(f.start, f.end, f.text) for f in from_file]


def test_cli_gives_the_same_finals_when_paced_in_realtime_or_unpaced(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--realtime takes the audio's duration and shows partials, but its finals equal an unpaced run's."""
    audio, truth = speech_with_pauses(SHORT)
    path = write_wav(tmp_path / "short.wav", audio)
    code, out, _ = _run(capsys, "--url", server.url, "--format", "jsonl", str(path))
    unpaced = parse_jsonl(out)
    assert code == 0

    begin = time.monotonic()
    code, out, _ = _run(capsys, "--url", server.url, "--format", "jsonl", "--realtime", str(path))
    elapsed = time.monotonic() - begin
    paced = parse_jsonl(out)

    assert code == 0 and elapsed >= 0.95 * len(audio) / SAMPLE_RATE
    for events in (unpaced, paced):
        assert_event_order(events)
    assert any(isinstance(m, Partial) for m in paced)  # drafts while "speaking", as from a microphone
    assert_near(spans(paced), truth)
    assert [(f.text, f.start, f.end) for f in finals(paced)] == [(f.text, f.start, f.end) for f in finals(unpaced)]


def test_cli_writes_every_sent_final_and_exits_0_when_interrupted_during_realtime_stream(
    server: ServerThread, tmp_path: Path
) -> None:
    """SIGINT in the third sentence: finals for the two sentences sent and for the part of the third, exit 0."""
    audio, truth = speech_with_pauses([0.3, "Hello there.", 0.8, "Good morning to you.", 0.8,
                                       "Please call me back tomorrow morning.", 0.5])
    path = write_wav(tmp_path / "talk.wav", audio)
    cut = truth[2][0] + 0.7  # audio seconds sent when the signal comes
    proc = client_process("--url", server.url, "--format", "jsonl", "--realtime", "-v", str(path))
    try:
        first = proc.stderr.readline()  # "connected" comes once the SIGINT handler is in place
        assert first.startswith("dgasr-client: connected: session"), first
        time.sleep(cut)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping: waiting up to 10 s for the last results" in err
    events = parse_jsonl(out)
    assert_event_order(events)
    got = spans(events)
    assert_near(got[:2], truth[:2])  # the sentences sent completely
    assert len(got) == 3 and abs(got[2][0] - truth[2][0]) <= 0.45  # the one cut short is flushed by eos
    assert cut - 0.2 <= got[2][1] < truth[2][1] - 0.3
    closed = closes(events)[0]
    assert closed.reason == "eos" and closed.audio_seconds < len(audio) / SAMPLE_RATE - 1.0


def test_cli_exits_1_with_every_final_written_when_server_shuts_down_during_a_file(
    server: ServerThread, tmp_path: Path
) -> None:
    """Server stopped (as by SIGTERM) mid-sentence: its finals and closed (shutdown) are written, then exit 1."""
    audio, truth = speech_with_pauses(SHORT)
    path = write_wav(tmp_path / "short.wav", audio)
    proc = client_process("--url", server.url, "--format", "jsonl", "--realtime", "-v", str(path))
    try:
        first = proc.stderr.readline()
        assert first.startswith("dgasr-client: connected: session"), first
        time.sleep(truth[1][0] + 0.5)
        server.stop()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert err.splitlines()[-1] == "dgasr-client: server ended the session before the input did (shutdown)"
    events = parse_jsonl(out)
    assert_event_order(events)
    assert events[-1].reason == "shutdown"
    s1, s2 = spans(events)
    assert_near([s1], truth[:1])
    assert abs(s2[0] - truth[1][0]) <= 0.45 and s2[1] < truth[1][1] - 0.3  # the open sentence, as far as sent
