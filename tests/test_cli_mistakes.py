"""Common mistakes a new user makes get one clear line and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import POCKETSPHINX_DATA

from client.sources import FileSource, SourceError
from server.cli.transcribe import read_audio

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env or dict(os.environ))


def _one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # argparse prints its (wrapped) usage before the error; everything else is one line
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--port", "99999"], "--port must be 0-65535"),
    (["--vad-aggressiveness", "7"], "0-3"),
    (["--port", "nine"], "invalid int value"),
    (["--tls-cert", "/nonexistent/cert.pem"], "go together"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "no such file"),
    (["--auth-token-file", "/nonexistent/token"], "cannot read the auth token file"),
    (["--auth-token", " "], "the auth token is empty"),
    (["--log-format", "xml"], "text or json"),
])
def test_server_bad_options_exit_2_with_one_line(args, words):
    line = _one_line_error(_run("-m", "server", *args), 2)
    assert words in line


def test_server_port_in_use_exits_2_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("-m", "server", "--model", "tiny-random", "--port", str(port))
    line = _one_line_error(proc, 2)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line


def test_server_unknown_host_exits_2_with_one_line():
    line = _one_line_error(_run("-m", "server", "--model", "tiny-random", "--host", "no-such-host.invalid"), 2)
    assert "cannot listen on no-such-host.invalid" in line


@pytest.mark.parametrize("prog, module, words", [
    ("dgasr-server", "server", "--max-sessions"),
    ("dgasr-transcribe", "server.cli.transcribe", "--raw-rate"),
])
def test_help_does_not_import_torch(prog, module, words):
    code = (f"import sys, runpy; sys.modules['torch'] = None; sys.argv = ['{prog}', '--help']; "
            f"runpy.run_module('{module}', run_name='__main__')")
    proc = _run("-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert words in proc.stdout and "--model" in proc.stdout


def test_transcribe_reads_headerless_raw_files_as_16_bit_mono():
    raw = str(POCKETSPHINX_DATA / "goforward.raw")
    audio = read_audio(raw)
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 2.786) < 0.01
    assert len(read_audio(raw, raw_rate=8000)) == 2 * len(audio)  # resampled from 8 kHz to 16 kHz


def test_transcribe_missing_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "nothere.wav"
    line = _one_line_error(_run("-m", "server.cli.transcribe", "--model", "tiny-random", str(missing)), 2)
    assert str(missing) in line and "no such file" in line


def test_transcribe_a_raw_file_end_to_end():
    proc = _run("-m", "server.cli.transcribe", "--model", "tiny-random", str(POCKETSPHINX_DATA / "goforward.raw"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 1


def test_client_file_source_reads_raw_and_names_missing_files(tmp_path):
    source = FileSource(POCKETSPHINX_DATA / "goforward.raw")
    assert source.native_rate == 16000 and source.channels == 1 and abs(source.duration - 2.786) < 0.01
    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "gone.flac")
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(SourceError, match="cannot read audio file"):
        FileSource(bad)


def test_client_raw_file_with_rate_is_accepted_but_rate_on_a_wav_is_a_usage_error(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    line = _one_line_error(_run("-m", "client", "--rate", "8000", str(wav), "--url", "ws://127.0.0.1:9"), 2)
    assert "--rate only applies to raw PCM" in line

