"""Capacity planning: cost files, and the simulator that replays them on the real scheduling code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import capacity  # noqa: E402

from costs import Costs  # noqa: E402


def _costs(encoder: float, prompt: float, step: float, per_item: float = 0.0) -> Costs:
    batch = [1, 4, 16]
    return Costs("test", "estimate", "virtual", "tiny", 8.0, 32, 2, 8, batch,
                 [encoder + per_item * b for b in batch], [prompt] * 3, [step + per_item * b for b in batch])


def test_a_cost_file_interpolates_between_and_beyond_its_batch_sizes(tmp_path):
    costs = _costs(10.0, 5.0, 2.0, per_item=1.0)
    assert costs.batch_ms(1, 8) == pytest.approx(11 + 5 + 8 * 3)
    assert costs.batch_ms(10, 8) == pytest.approx(20 + 5 + 8 * 12)  # between 4 and 16
    assert costs.batch_ms(32, 1) == pytest.approx(42 + 5 + 34)  # beyond 16: the last slope
    costs.save(tmp_path / "c.json")
    assert Costs.load(tmp_path / "c.json") == costs
    with pytest.raises(ValueError):
        Costs("x", "guess", "d", "m", 8.0, 32, 2, 8, [1], [1.0], [1.0], [1.0])


def test_the_per_row_decode_is_charged_by_audio_length_and_old_files_charge_none(tmp_path):
    plain = _costs(10.0, 5.0, 2.0)
    decoding = Costs(**{**plain.__dict__, "decode_ms": [4.0, 16.0, 64.0], "request_seconds": 8.0})
    assert decoding.batch_ms(4, 8) == pytest.approx(plain.batch_ms(4, 8) + 16.0)
    # half the audio: half the decode, while a padded encoder (encoder_scales false) costs the same
    assert decoding.batch_ms(4, 8, audio_seconds=4.0) == pytest.approx(plain.batch_ms(4, 8, 4.0) + 8.0)
    assert plain.batch_ms(4, 8, 4.0) == plain.batch_ms(4, 8)
    old = {k: v for k, v in plain.__dict__.items() if k != "decode_ms"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Costs.load(tmp_path / "old.json").batch_ms(4, 8) == plain.batch_ms(4, 8)
    with pytest.raises(ValueError, match="decode_ms"):
        Costs(**{**plain.__dict__, "decode_ms": [1.0]})


@pytest.fixture(scope="module")
def audio():
    return capacity._speech()


def test_a_cheap_device_keeps_up_and_every_segment_gets_one_final(audio):
    row = capacity.simulate(_costs(2.0, 1.0, 0.5), streams=4, seconds=40.0, max_batch=16, audio=audio)
    assert row["segments"] >= 4 * 6 and row["finals"] == row["segments"]  # none lost
    assert row["final_p95"] < 0.1 and capacity.kept_up(row, 1500)
    # speech is detected with its pre-roll already long enough for a draft: only device time is left
    assert 0 < row["first_partial_p50"] < 0.05
    assert 0 < row["utilisation"] < 0.2


def test_a_slow_device_falls_behind_and_more_streams_cost_more(audio):
    slow = _costs(200.0, 100.0, 60.0, per_item=10.0)
    few = capacity.simulate(slow, streams=1, seconds=40.0, max_batch=16, audio=audio)
    many = capacity.simulate(slow, streams=12, seconds=40.0, max_batch=16, audio=audio)
    assert capacity.kept_up(few, 1500) and not capacity.kept_up(many, 1500)
    assert many["final_p95"] > few["final_p95"] and many["utilisation"] > 0.9
    assert many["drafts_dropped"] > few["drafts_dropped"] and many["mean_batch"] > 1


def test_bench_engine_writes_a_cost_file_the_simulator_reads(tmp_path):
    out = tmp_path / "tiny.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_engine.py"), "--model", "tiny-random",
                    "--batches", "1,2", "--repeats", "4", "--write-costs", str(out)], check=True, capture_output=True)
    costs = Costs.load(out)
    assert costs.kind == "measured" and costs.batch == [1, 2] and all(s > 0 for s in costs.step_ms)
    assert len(costs.decode_ms) == 2 and "speech" in costs.notes and "language automatic" in costs.notes
    assert json.loads(out.read_text())["model"] == "tiny-random"
    shipped = Costs.load(ROOT / "costs" / "h200-real-estimate.json")
    assert shipped.kind == "estimate" and shipped.final_steps == 16


def test_the_gpu_measurement_script_passes_its_cpu_dry_run_on_a_shrunken_real_config(tmp_path):
    """With the speech saved beforehand, as on a bare GPU machine: no espeak-ng on its PATH."""
    out, speech = tmp_path / "dry.json", tmp_path / "speech.npy"
    script = [sys.executable, str(ROOT / "scripts" / "gpu_costs.py")]
    subprocess.run(script + ["--save-speech", str(speech)], check=True, capture_output=True)
    bare = tmp_path / "bin"
    bare.mkdir()
    run = subprocess.run(script + ["--shrink", "--device", "cpu", "--batches", "1,2", "--streams", "1",
                                   "--speech", str(speech), "--out", str(out)],
                         capture_output=True, text=True, env={"PATH": str(bare), "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    costs = Costs.load(out)
    assert costs.kind == "measured" and costs.canvas_length == 256 and costs.window_seconds == 30.0
    assert costs.batch == [1, 2] and costs.step_ms[1] > 0
    assert "1 streams: final p95" in run.stdout
