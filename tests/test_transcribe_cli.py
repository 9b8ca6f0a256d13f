"""dgasr-transcribe: files in, one transcript line per file, long files cut by the VAD at pauses."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import speech_with_pauses

from server.cli.transcribe import main, read_audio
from server.engine import Engine
from server.engine.tiny import build_tiny_random
from server.service.config import ServerConfig, session_config
from server.service.files import file_session, transcribe_offline

LONG = ["This recording is longer than the model window.", 0.7, "So the tool must cut it into pieces.", 0.7,
        "Each cut should fall into a pause between words.", 0.7, "And the pieces come back in order."]


def test_transcribe_prints_one_line_per_file_in_order_cut_by_the_vad_at_pauses(tmp_path, capsys):
    """A 16 s file (window 8 s) is cut by the same VAD a live stream goes through: one segment per
    sentence, each inside its sentence's span; each file gives exactly one line, in order."""
    long_audio, truth = speech_with_pauses(LONG)
    short_audio, _ = speech_with_pauses(["Short one."])
    sf.write(tmp_path / "long.flac", long_audio, 16000)
    sf.write(tmp_path / "short.wav", np.stack([short_audio, short_audio], axis=1), 16000)  # stereo
    assert main(["--model", "tiny-random", "--steps", "4", str(tmp_path / "long.flac"), str(tmp_path / "short.wav")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2

    engine = Engine(lambda: build_tiny_random(seed=0), warmup=False).start()
    try:
        spec = engine.wait_ready().spec
        config = session_config(ServerConfig(), spec, final_steps=4)
        audios = [read_audio(str(tmp_path / name)) for name in ("long.flac", "short.wav")]
        results = transcribe_offline(engine, [(file_session(config, None), a) for a in audios])
    finally:
        engine.close()
    assert lines == [r.text for r in results]
    finals = results[0].finals
    assert len(finals) == len(truth) == 4 and all(f.steps == 4 for f in finals)
    for final, (t0, t1) in zip(finals, truth):  # every segment holds its sentence, not a piece of the next
        assert t0 - 0.45 <= final.start <= t0 and t1 <= final.end <= t1 + 0.45, (final.start, final.end, t0, t1)
        assert final.end - final.start <= spec.window_seconds


def test_transcribe_exits_2_with_one_line_for_an_unreadable_file(tmp_path, capsys):
    """A file soundfile cannot read is named in a one-line error, exit code 2, nothing on stdout."""
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    assert main(["--model", "tiny-random", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "cannot read" in captured.err and "notes.txt" in captured.err


def test_transcribe_exits_1_with_the_hub_message_when_weights_are_missing_offline(tmp_path):
    """The real model offline with an empty cache: exit 1, one line naming repo, licence and token."""
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli.transcribe", "--model", "diffusion-gemma-asr-small", "--device", "cpu", str(wav)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dgasr-transcribe:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "openai/whisper-small" in lines[0] and "HF_TOKEN" in lines[0] and "licence" in lines[0]


def test_auto_model_without_gpu_or_embedded_model_says_what_to_use(monkeypatch):
    """A checkout without the demo weights and without CUDA: --model auto explains the choices."""
    from server.engine import loader

    monkeypatch.setattr(loader.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "PRESETS", {k: v for k, v in loader.PRESETS.items() if k != loader.DEMO_MODEL})
    with pytest.raises(loader.ModelLoadError, match="no CUDA GPU") as info:
        loader.resolve_model_name("auto")
    assert "tiny-random" in str(info.value)
