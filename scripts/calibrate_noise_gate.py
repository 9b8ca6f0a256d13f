"""Calibrate a model's noise gate: what it reads in noise against what it reads in short speech.

How this works
--------------
The gate (:class:`server.engine.spec.NoiseGate`) empties a short transcript whose words are
weakly aligned to the audio or that is too little text for its seconds of sound. This
script records every transcript the gate could look at (at most 12 wide) with the gate
off, through the same VAD session and engine as ``dgasr-transcribe``:

* **noise**: white, pink and babble (18-30 espeak talkers in six languages at once), 60 s
  each at -20 and -10 dBFS, seeds ``--seeds`` (seed 0 is ``eval_wer.py``'s own noise, so
  it is left out by default: the gate is not fitted to the evaluation);
* **short speech**: the answers people give in one word ("yes", "nein", "oui", "sí", "नहीं",
  "好", a digit), spoken by espeak voice variants held out of training (and three flite
  voices for English), with 0.4 s of silence either side; plus ``--data`` (a
  ``demo_data.py`` directory) and the human English recordings, whose finals are longer;
  with ``--people``, also people's answers: the Asterisk prompts of one or two words
  (``scripts/human_speech.py``: digits, letters, months, "yes"; English, French and Spanish)
  outside its held-out split.

It then prints, for a grid of gates, how many noise readings would pass and how many
speech readings would be lost, and the same for the model's own gate::

    python scripts/calibrate_noise_gate.py --model demo --data runs/dev20 --seeds 1-39
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from server.core.requests import WordTiming  # noqa: E402
from server.engine import Engine, denoise, load_model  # noqa: E402
from server.engine.spec import NoiseGate  # noqa: E402
from server.engine.words import below_gate, is_short, text_width  # noqa: E402
from server.service.config import ServerConfig, session_config  # noqa: E402
from server.service.files import file_session, transcribe_offline  # noqa: E402

# One-word answers: (what is written, what the synthesizer is given). Mandarin through pinyin.
ANSWERS = {
    "en": ["yes", "no", "seven", "okay", "thanks", "right", "two", "what"],
    "de": ["ja", "nein", "sieben", "danke", "gut", "zwei"],
    "fr": ["oui", "non", "sept", "merci", "bien", "deux"],
    "es": ["sí", "no", "siete", "gracias", "bien", "dos"],
    "hi": ["हाँ", "नहीं", "सात", "ठीक", "दो"],
    "zh": [("好", "hao3"), ("是", "shi4"), ("对", "dui4"), ("不", "bu4"), ("七", "qi1"), ("谢谢", "xie4 xie5")],
}
VOICES = {"en": "en-us", "de": "de", "fr": "fr-fr", "es": "es", "hi": "hi", "zh": "cmn-latn-pinyin"}
HELD_OUT_VARIANTS = ("m3", "f3", "klatt3")  # demo_data never trains on these
RECORD_WIDTH = 12


@dataclasses.dataclass(frozen=True)
class Reading:
    """One transcript the gate could look at, with what the gate decides on."""

    kind: str
    text: str
    confidence: float
    seconds: float
    aligned: bool


def said_alone(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """An answer as a session hears it: 0.4 s of silence either side, peak at half scale."""
    pad = np.zeros(int(0.4 * rate), np.float32)
    return np.concatenate([pad, 0.5 * audio / (np.abs(audio).max() + 1e-6), pad]).astype(np.float32)


def answers() -> list[tuple[str, np.ndarray]]:
    """(language, audio) of every one-word answer in every held-out voice."""
    import demo_data

    out = []
    for language, words in ANSWERS.items():
        for word in words:
            say = word[1] if isinstance(word, tuple) else word
            takes = [demo_data.synthesize("espeak", f"{VOICES[language]}+{v}", say, 150 + 10 * j, 50, 0)
                     for j, v in enumerate(HELD_OUT_VARIANTS)]
            if language == "en":
                takes += [demo_data.synthesize("flite", v, say, 0, 0, 0) for v in ("slt", "awb", "rms")]
            out += [(language, said_alone(a)) for a in takes]
    return out


def people_answers(words: int = 2) -> list[tuple[str, np.ndarray]]:
    """(language, audio) of the Asterisk prompts of at most ``words`` words outside the held-out split."""
    import demo_data
    import human_speech

    return [(p.language, said_alone(human_speech.read_g722(p.path)))
            for p in human_speech.split(human_speech.prompts(), test=False)
            if len(demo_data.normalize(p.text).split()) <= words]


def record(model, clips: list[tuple[str, str | None, np.ndarray]]) -> list[Reading]:
    """Every transcript at most RECORD_WIDTH wide that the engine makes of ``clips`` (kind, language, audio)."""
    found: list[Reading] = []
    kind = [""]
    original = denoise.below_gate

    def spy(gate, text, words, seconds):  # the engine asks the gate about every short transcript
        confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
        found.append(Reading(kind[0], text, round(confidence, 3), round(seconds, 2), bool(words)))
        return False

    open_gate = NoiseGate(max_chars=RECORD_WIDTH, min_confidence=0.0)
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, noise_gate=open_gate))
    denoise.below_gate = spy
    engine = Engine(lambda: model, warmup=False).start()
    engine.wait_ready()
    try:
        config = session_config(ServerConfig(), model.spec)
        for kind[0], language, audio in clips:
            transcribe_offline(engine, [(file_session(config, language), audio)])
    finally:
        engine.close()
        denoise.below_gate = original
    return found


def gated(gate: NoiseGate, r: Reading) -> bool:
    """What ``gate`` would make of one recorded reading (the engine's own decision)."""
    if not is_short(gate, r.text):
        return False
    words = (WordTiming(r.text, 0.0, r.seconds, r.confidence),) if r.aligned else ()  # their mean, as one word
    return below_gate(gate, r.text, words, r.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", type=Path, help="a demo_data.py directory of longer held-out speech")
    parser.add_argument("--seeds", default="1-39", help="noise seeds, FIRST-LAST")
    parser.add_argument("--people", action="store_true",
                        help="also the short Asterisk prompts of human_speech.py's training split")
    args = parser.parse_args()
    import demo_data
    import eval_wer

    first, last = (int(x) for x in args.seeds.split("-"))
    model = load_model(args.model, device="cpu")
    clips = [(f"noise-{name}-{seed}", None, (gain * audio).astype(np.float32))
             for seed in range(first, last + 1) for name, audio in demo_data.noise_only(seed, 60.0).items()
             for gain in (0.1, 0.3)]
    clips += [(f"answer-{language}", language, audio) for language, audio in answers()]
    if args.people:
        clips += [(f"answer-people-{language}", language, audio) for language, audio in people_answers()]
    rows = (eval_wer.load_heldout(args.data) if args.data else []) + eval_wer.load_human()
    clips += [(f"speech-{row['set']}", row["language"], row["wav"]) for row in rows]
    readings = record(model, clips)
    noise = [r for r in readings if r.kind.startswith("noise")]
    speech = [r for r in readings if not r.kind.startswith("noise")]
    print(f"{len(noise)} short readings of noise (seeds {args.seeds}), {len(speech)} readings of speech "
          f"({sum(r.kind.startswith('answer') for r in speech)} short answers, "
          f"{sum(r.kind.startswith('answer-people') for r in speech)} of them people's)")
    for r in sorted(noise, key=lambda r: (text_width(r.text), r.confidence)):
        print(f"  noise {r.kind:22s} {r.text!r:12s} confidence {r.confidence:.2f}, "
              f"{text_width(r.text) / r.seconds:.2f} wide/s of {r.seconds:.2f} s")
    people = [r for r in speech if r.kind.startswith("answer-people")]
    print("| max wide | min confidence | min wide/s | noise passed | speech lost | of it people's answers |")
    print("|---|---|---|---|---|---|")
    grid = [NoiseGate(m, c, d) for m, c, d in itertools.product((3, 4, 6, 8), (0.3, 0.4, 0.5, 0.6, 0.7), (0.0, 0.75, 1.0, 1.3))]
    for gate in [model.spec.noise_gate] + grid:
        passed = sum(not gated(gate, r) for r in noise)
        lost = sum(gated(gate, r) for r in speech)
        mark = " (the model's)" if gate is model.spec.noise_gate else ""
        print(f"| {gate.max_chars}{mark} | {gate.min_confidence} | {gate.min_chars_per_second} | "
              f"{passed} of {len(noise)} | {lost} of {len(speech)} | "
              f"{sum(gated(gate, r) for r in people)} of {len(people)} |")


if __name__ == "__main__":
    main()
