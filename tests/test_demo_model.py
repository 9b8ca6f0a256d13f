"""The shipped demo model (server/models/demo): loaded by the real loader, it transcribes real speech.

The limits below are this checkpoint's measured level with a margin (see docs/demo-model.md
for the table and the command): they catch a checkpoint or engine change that makes the
model worse. They are not the accuracy bar the model is still short of (10% held-out,
25% human English).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import human_english

from server.cli.transcribe import main as transcribe_main
from server.engine import Engine, TranscribeRequest, load_model, loader
from server.engine.denoise import run_batch
from server.service.config import ServerConfig, session_config
from server.service.files import file_session, transcribe_offline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import demo_data  # noqa: E402
import human_speech  # noqa: E402
from scoring import HUMAN, PEOPLE, error_rate  # noqa: E402

PER_LANGUAGE = 8
# measured on this checkpoint with the same 8 held-out sentences per language, plus a margin
# of 7-8 points (2026-12-07, the denoiser trained on the lexicon's readings, audio path in
# bf16: en 17%, de 16%, fr 29%, es 10% WER; hi 14%, zh 18% CER; human English 39% WER; a CPU
# without native bf16 runs it in float32, which read the development set within 1.2 points)
HINTED_LIMITS = {"en": 0.24, "de": 0.23, "fr": 0.36, "es": 0.17, "hi": 0.21, "zh": 0.25}
UNHINTED_FACTOR = 1.5  # no language hint: at most this times the hinted error, plus 5 points
HUMAN_LIMIT = 0.46
# the word pairs on 8 held-out sentences of running text per language (see the test): measured
# en 19%, de 16%, es 22% WER with them, 29%, 18%, 29% without (2026-12-07), plus a margin
SENTENCE_LIMITS = {"en": 0.27, "de": 0.24, "es": 0.30}
# Asterisk's voice talents (scripts/human_speech.py), the first PEOPLE_PROMPTS held-out prompts per
# language: measured en 23%, fr 64%, es 60% WER (2026-12-07), plus a margin
PEOPLE_PROMPTS = 30
PEOPLE_LIMITS = {"en": 0.30, "fr": 0.71, "es": 0.67}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", "cpu")


@pytest.fixture(scope="module")
def heldout():
    return demo_data.heldout(PER_LANGUAGE)


def _rates(model, utts, hinted: bool) -> dict[str, float]:
    steps = model.spec.final_steps
    rates = {}
    for lang in demo_data.LANGS:
        rows = [u for u in utts if u.language == lang]
        reqs = [TranscribeRequest(u.audio, steps, lang if hinted else None, seed=0) for u in rows]
        rates[lang] = error_rate(lang, [u.text for u in rows], [r.text for r in run_batch(model, reqs)])
    return rates


def test_auto_picks_the_shipped_demo_without_cuda_and_the_log_says_why(monkeypatch, caplog, demo):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="dgasr.engine"):
        assert loader.resolve_model_name("auto") == "demo"
    assert any("no CUDA GPU" in r.getMessage() and "demo" in r.getMessage() for r in caplog.records)
    assert loader.PRESETS["demo"] == loader.DEMO_DIR
    assert demo.spec.name == "demo" and demo.spec.canvas_start == "ctc" and demo.spec.encoder_bucket_seconds
    assert demo.whisper.config.d_model == 512 and demo.whisper.config.encoder_layers == 6  # whisper-base
    assert demo.lexicon is not None and demo.lexicon.languages == ["de", "en", "es", "fr", "hi", "zh"]
    assert sorted(demo.lexicon.weights) == sorted(demo.lexicon.languages)  # tuned: lexicon/weights.json
    assert "MIT License" in (loader.DEMO_DIR / "whisper" / "LICENSE.whisper").read_text()  # OpenAI's terms travel along
    size = sum(f.stat().st_size for f in loader.DEMO_DIR.rglob("*") if f.is_file())
    assert size < 60e6


def test_the_shipped_demo_transcribes_heldout_sentences_in_every_language(demo, heldout):
    """Voices, speeds, seeds and (in every sentence) a word that training never drew."""
    hinted = _rates(demo, heldout, hinted=True)
    assert {lang: rate <= HINTED_LIMITS[lang] for lang, rate in hinted.items()} == dict.fromkeys(hinted, True), hinted
    unhinted = _rates(demo, heldout, hinted=False)
    assert all(unhinted[lang] <= UNHINTED_FACTOR * hinted[lang] + 0.05 for lang in hinted), (hinted, unhinted)


def test_unhinted_reading_is_the_same_when_languages_are_compared_with_a_narrow_beam(demo, heldout):
    """Without a hint the four Latin-script lexicons are compared with a narrow beam and only the
    winner is searched in full (2.4x less decode per request); that must choose what searching
    every candidate in full chose."""
    rows = [u for u in heldout if u.language in ("en", "de", "fr", "es")]
    lexicon = demo.lexicon
    assert 0 < lexicon.pick_beam < lexicon.beam

    def read() -> list:
        lexicon._decoders.clear()
        return run_batch(demo, [TranscribeRequest(u.audio, 1, None, seed=0) for u in rows])

    narrow = read()
    lexicon.pick_beam, saved = 0, lexicon.pick_beam
    try:
        full = read()
    finally:
        lexicon.pick_beam = saved
        lexicon._decoders.clear()
    pairs = [(a.text, b.text) for a, b in zip(narrow, full)]
    assert len(pairs) == 32 and sum(a != b for a, b in pairs) <= 1, pairs
    # each result names the language it was read in: the one spoken, nearly always (held-out: 116 of 120)
    heard = [(u.language, r.language) for u, r in zip(rows, narrow)]
    assert sum(said == got for said, got in heard) >= 30, heard


def test_more_denoising_steps_than_the_default_are_never_worse_than_one(demo, heldout):
    """A user who raises --final-steps must not fall off a cliff (at transformers' default
    temperatures two steps gave 105-124% WER): the demo's sampler keeps every step count
    at least as good as one step, within two points."""
    rows = [u for u in heldout if u.language in ("en", "es")]
    by_steps = {}
    for steps in (1, 4):
        hyps = [r.text for r in run_batch(demo, [TranscribeRequest(u.audio, steps, u.language, seed=3) for u in rows])]
        by_steps[steps] = {lang: error_rate(lang, [u.text for u in rows if u.language == lang],
                                            [h for u, h in zip(rows, hyps) if u.language == lang]) for lang in ("en", "es")}
    assert all(by_steps[4][lang] <= by_steps[1][lang] + 0.02 for lang in ("en", "es")), by_steps
    assert max(by_steps[4].values()) < 0.6, by_steps


def test_the_shipped_demo_transcribes_human_english_recordings(demo):
    """Debian's pocketsphinx-testdata: LibriVox readers, card names, digits; people, not synthesizers."""
    rows = human_english()
    reqs = [TranscribeRequest(np.asarray(audio), demo.spec.final_steps, "en", seed=0) for _, audio, _ in rows]
    hyps = [r.text for r in run_batch(demo, reqs)]
    assert error_rate(HUMAN, [text for _, _, text in rows], hyps) <= HUMAN_LIMIT, hyps


def test_the_shipped_demo_transcribes_people_speaking_english_french_and_spanish(demo):
    """Held-out Asterisk prompts (Debian's asterisk-core-sounds-*-g722): a voice talent per language,
    far from the synthetic voices the demo learned from; French and Spanish people are read worst."""
    prompts = human_speech.split(human_speech.prompts(), test=True)
    rates = {}
    for language in PEOPLE_LIMITS:
        rows = [(p.text, human_speech.read_g722(p.path)) for p in prompts if p.language == language]
        rows = [(text, audio) for text, audio in rows if audio.shape[0] <= demo.spec.window_samples][:PEOPLE_PROMPTS]
        reqs = [TranscribeRequest(audio, demo.spec.final_steps, language, seed=0) for _, audio in rows]
        hyps = [r.text for r in run_batch(demo, reqs)]
        rates[language] = error_rate(PEOPLE + language, [text for text, _ in rows], hyps)
    assert {lang: rate <= PEOPLE_LIMITS[lang] for lang, rate in rates.items()} == dict.fromkeys(PEOPLE_LIMITS, True), \
        rates


def test_dgasr_transcribe_with_the_demo_prints_the_words_of_a_recording(tmp_path, capsys):
    name, audio, text = next(row for row in human_english() if row[0] == "goforward")
    sf.write(tmp_path / "goforward.wav", np.asarray(audio), 16000)
    assert transcribe_main(["--model", "demo", "--language", "en", str(tmp_path / "goforward.wav")]) == 0
    line = capsys.readouterr().out.strip()
    assert error_rate(HUMAN, [text], [line]) <= 0.5, (text, line)


def test_noise_alone_gives_no_text(demo):
    """White and pink noise at -20 and -10 dBFS, 30 s each, through the VAD session a file goes through.

    Without the model's noise gate the loud pink noise of this seed came back as "s".
    """
    rng = np.random.default_rng(11)
    n = 30 * 16000
    pink = demo_data.shaped_noise(rng.standard_normal(n), 1)
    sounds = [gain * s for s in (rng.standard_normal(n), pink) for gain in (0.1, 0.3)]
    assert _finals(demo, [(None, s) for s in sounds]) == [[], [], [], []]


def _finals(demo, clips: list[tuple[str | None, np.ndarray]]) -> list[list[str]]:
    """Each clip's non-empty finals, through the VAD session a file goes through."""
    engine = Engine(lambda: demo, warmup=False).start()
    engine.wait_ready()
    try:
        config = session_config(ServerConfig(), demo.spec)
        results = transcribe_offline(engine, [(file_session(config, lang), a.astype(np.float32)) for lang, a in clips])
    finally:
        engine.close()
    return [[f.text for f in r.finals if f.text] for r in results]


def test_babble_gives_no_text_even_where_a_letter_of_it_aligns_confidently(demo):
    """60 s of 18-30 espeak talkers at once (noise seed 23 of scripts/calibrate_noise_gate.py).

    Its VAD segments hold seconds of sound each; the demo read one of them as "a" with
    confidence 0.75, which only the gate's width-per-second limit empties.
    """
    babble = demo_data.noise_only(23, 60.0)["babble"]
    assert _finals(demo, [(None, 0.1 * babble)]) == [[]]


def test_one_word_answers_are_not_taken_for_noise(demo):
    """"no" and "好" (hao3), said alone by held-out espeak voices: short, weakly aligned, kept.

    Their confidence (0.69 and 0.67) was under the gate's first threshold (0.7), which
    emptied them; spoken in about a second, they carry enough text for their sound.
    """
    pad = np.zeros(6400, np.float32)
    clips = [(lang, np.concatenate([pad, 0.5 * a / np.abs(a).max(), pad]))
             for lang, a in (("en", demo_data.synthesize("espeak", "en-us+klatt3", "no", 170, 50, 0)),
                             ("zh", demo_data.synthesize("espeak", "cmn-latn-pinyin+f3", "hao3", 160, 50, 0)))]
    assert _finals(demo, clips) == [["no"], ["好"]]


def test_the_engine_warm_up_builds_every_lexicon_so_the_first_speaker_does_not_wait():
    model = load_model("demo", "cpu")  # its own copy: the module's may have built some already
    assert model.lexicon._decoders == {}
    engine = Engine(lambda: model).start()
    try:
        engine.wait_ready()
        assert sorted(model.lexicon._decoders) == sorted(model.lexicon.languages) == ["de", "en", "es", "fr", "hi", "zh"]
    finally:
        engine.close()


def test_running_text_reads_better_with_the_word_pairs_than_by_word_frequency_alone(demo):
    """Sentences people wrote (Debian's fortunes that make_context.py held out of its counts),
    said by held-out voices: the word pairs shipped for English, German and Spanish choose
    "in his power" over "in is power", so the sentences read better with them than with the
    unigram alone (context 0), in all three languages together and under this checkpoint's
    limit."""
    import dataclasses

    languages = ("en", "de", "es")
    utts = [demo_data.sample_utterance(demo_data.HELDOUT_SEED + i, lang, demo_data.HELDOUT, text)
            for lang in languages for i, text in enumerate(demo_data.heldout_sentences(lang, PER_LANGUAGE))]
    shipped = dict(demo.lexicon.weights)

    def errors() -> dict[str, float]:
        rates = {}
        for lang in languages:
            rows = [u for u in utts if u.language == lang]
            reqs = [TranscribeRequest(u.audio, demo.spec.final_steps, lang, seed=0) for u in rows]
            rates[lang] = error_rate(lang, [u.text for u in rows], [r.text for r in run_batch(demo, reqs)])
        return rates

    assert all(shipped[lang].context == 1.0 for lang in languages)
    with_pairs = errors()
    try:
        demo.lexicon.set_weights({lang: dataclasses.replace(w, context=0.0) for lang, w in shipped.items()})
        alone = errors()
    finally:
        demo.lexicon.set_weights(shipped)
    assert sum(with_pairs.values()) < sum(alone.values()), (with_pairs, alone)
    assert {lang: rate <= SENTENCE_LIMITS[lang] for lang, rate in with_pairs.items()} == dict.fromkeys(languages, True), \
        with_pairs


def test_a_perfect_phoneme_reading_loses_only_words_said_alike(demo):
    """eval_wer.py's floor column: the lexicon search given each reference's own pronunciation.
    Words said alike come back as the likelier spelling (French plurals are silent: "équipes"
    is said as "équipe"), every other word as it was written, and the languages the lexicon
    reads in characters (Hindi, Mandarin) get no floor."""
    from scoring import perfect_phonemes

    rows = [{"language": "fr", "text": "équipes zones rendez-vous"},
            {"language": "en", "text": "the weather tomorrow around seven"},
            {"language": "es", "text": "la ciudad está cerca"},
            {"language": "hi", "text": "नमस्ते"}]
    floor = perfect_phonemes(demo, rows)
    assert floor[0] == "équipe zone rendez vous"
    assert floor[1] == "the weather tomorrow around 7"
    assert error_rate("en", [rows[1]["text"]], [floor[1]]) == 0.0
    assert floor[2].split()[:2] == ["la", "ciudad"] and floor[2].split()[3] == "cerca"
    assert floor[3] is None
