"""scripts/human_speech.py: Asterisk's recorded prompts (Debian's asterisk-core-sounds-*-g722,
installed by scripts/test.sh) as speech of people with transcripts, and how eval_wer.py scores them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import human_speech as hs  # noqa: E402
from scoring import PEOPLE, error_rate  # noqa: E402


@pytest.fixture(scope="module")
def prompts() -> dict[str, hs.Prompt]:
    return {p.name: p for p in hs.prompts()}


def test_each_recording_is_paired_with_its_own_transcript_in_three_languages(prompts):
    assert prompts["en/digits/7"].text == "seven"
    assert prompts["en/auth-thankyou"].text == "Thank you."
    assert prompts["es/digits/14"].text == "catorce"
    assert prompts["fr/conf-full"].text == "Cette conférence est pleine."
    assert {p.speaker for p in prompts.values()} == {"en_US_f_Allison", "es_MX_f_Allison", "fr_CA_f_June"}
    for language in hs.VOICES:  # 476-542 each, less what clean() leaves out
        assert 400 < sum(p.language == language for p in prompts.values()) < 560


def test_descriptions_of_tones_are_not_transcripts():
    assert hs.clean("[this is a simple beep tone]") is None
    assert hs.clean("\u201cVeuillez composer le code.\u201d") == "Veuillez composer le code."
    assert hs.clean("press * to toggle pause, press # to enter") == "press star to toggle pause, press pound to enter"


def test_one_prompt_in_five_is_held_out_whatever_else_is_installed(prompts):
    items = list(prompts.values())
    test, train = hs.split(items, test=True), hs.split(items, test=False)
    assert not {p.name for p in test} & {p.name for p in train}
    assert len(test) + len(train) == len(items)
    assert 0.15 < len(test) / len(items) < 0.25
    assert [p.name for p in hs.split(items[::2], test=True)] == [p.name for p in test if p in items[::2]]


def test_g722_decodes_to_16khz_audio_as_long_as_the_prompt(prompts):
    word = hs.read_g722(prompts["en/digits/7"].path)
    menu = hs.read_g722(prompts["en/auth-incorrect"].path)
    assert word.dtype == np.float32 and 0.3 < word.shape[0] / 16000 < 1.5
    assert menu.shape[0] > 2 * word.shape[0]
    assert 0.01 < float(np.sqrt(np.mean(word**2))) < 0.5


def test_every_row_compares_numbers_as_words_and_english_spellings_as_one():
    assert error_rate(PEOPLE + "fr", ["appuyez sur deux"], ["appuyez sur 2"]) == 0.0
    assert error_rate(PEOPLE + "es", ["catorce"], ["14"]) == 0.0
    assert error_rate(PEOPLE + "en", ["press 1"], ["press one"]) == 0.0
    assert error_rate(PEOPLE + "en", ["press 1"], ["press 2"]) == 0.5
    # synthetic rows too: the same sound written two ways is not an error, another word is
    assert error_rate("en", ["press one"], ["press 1"]) == 0.0
    assert error_rate("es", ["tengo seis años"], ["tengo 6 años"]) == 0.0
    assert error_rate("de", ["drei katzen"], ["vier katzen"]) == 0.5
    assert error_rate("en", ["the colour of the centre"], ["the color of the center"]) == 0.0
    assert error_rate("en", ["the colour"], ["the collar"]) == 0.5
    assert error_rate("zh", ["我有3个"], ["我有三个"]) == 0.25  # Mandarin is compared as written


def test_training_takes_cover_each_prompt_as_often_as_asked_and_a_rerun_remakes_a_lost_shard(prompts, tmp_path,
                                                                                             monkeypatch):
    import json

    import demo_shards

    monkeypatch.setattr(demo_shards, "SHARD", 4)
    items = [prompts[name] for name in ("en/digits/7", "es/digits/14", "fr/conf-full")]
    whisper = Path(__file__).resolve().parent.parent / "server" / "models" / "demo" / "whisper"
    hs.write_views(tmp_path, 3, items, 2, seed=5, whisper=whisper)

    def rows(shard: int) -> list[str]:
        return [json.loads(line)["text"] for line in open(tmp_path / f"{shard:04d}.jsonl", encoding="utf-8")]

    texts = rows(3) + rows(4)
    assert (len(rows(3)), len(rows(4))) == (4, 2)
    assert sorted(texts) == sorted(["seven", "catorce", "cette conférence est pleine"] * 2)
    frames = np.load(tmp_path / "0004.npy")
    (tmp_path / "0004.npy").unlink()
    hs.write_views(tmp_path, 3, items, 2, seed=5, whisper=whisper)
    assert rows(3) + rows(4) == texts
    assert np.array_equal(np.load(tmp_path / "0004.npy"), frames)
