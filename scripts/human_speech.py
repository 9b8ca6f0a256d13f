#!/usr/bin/env python
"""Recordings of people, with transcripts, from Debian's Asterisk prompt packages.

How this works
--------------
Everything else the demo model hears in training is synthetic. Debian ships the Asterisk
PBX's voice prompts, recorded by professional voice talents and released under CC-BY-SA 3.0,
with a transcript of every prompt: Allison Smith in US English (``asterisk-core-sounds-en``)
and Mexican Spanish (``-es``), June Wallack in Canadian French (``-fr``); the ``-g722``
packages hold them as 16 kHz wideband G.722, which PyAV decodes. That is 476-540 prompts
per language: menus, numbers, letters, the phonetic alphabet, sentences of up to 30 s.

:func:`prompts` pairs each recording with its line of ``core-sounds-<lang>.txt.gz`` and
leaves out the descriptions of tones; :func:`held_out` puts one prompt in five (by a CRC of
its name, so it never moves) in the held-out split. The held-out prompts that fit the demo's
window are a test set of people in three languages (``--out``, the layout of
``scripts/demo_data.py``, read by ``scripts/eval_wer.py --people``); the others become training
shards (``--shards``: several views of each with ``demo_data.augment``'s speed, reverb,
telephone band, silences, noise and gain), in the layout of ``scripts/demo_shards.py``::

    apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-fr-g722 asterisk-core-sounds-es-g722
    python scripts/human_speech.py --out runs/asterisk-test
    python scripts/human_speech.py --shards runs/human/shards --first 9000 --views 8
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_data  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds")
DOCS = Path("/usr/share/doc")
# language -> the voice talent's folder of prompts
VOICES = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June", "es": "es_MX_f_Allison"}
PACKAGES = tuple(f"asterisk-core-sounds-{lang}-g722" for lang in VOICES)
HELD_OUT = 5  # one prompt in five
_LINE = re.compile(r"^([^;:\s][^:\s]*):\s*(.*?)\s*$")


@dataclass(frozen=True)
class Prompt:
    name: str  # e.g. "en/digits/7"
    language: str
    speaker: str
    text: str
    path: Path


def held_out(name: str) -> bool:
    return zlib.crc32(name.encode()) % HELD_OUT == 0


def transcripts(language: str, docs: Path = DOCS) -> dict[str, str]:
    """Prompt name -> its transcript, from ``core-sounds-<language>.txt.gz``."""
    path = docs / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"
    out = {}
    for line in gzip.open(path, "rt", encoding="utf-8", errors="replace"):
        m = _LINE.match(line.strip())
        if m and m.group(2):
            out[m.group(1)] = m.group(2)
    return out


def clean(text: str) -> str | None:
    """The words said, or None for a description ("[ascending tones]", "<beep ascending>")."""
    text = text.strip().strip("\u201c\u201d\"")
    if not text or any(c in text for c in "[(<"):
        return None
    text = text.replace("...", " ").replace("#", " pound ").replace("*", " star ")
    return " ".join(text.split())


def prompts(sounds: Path = SOUNDS, docs: Path = DOCS) -> list[Prompt]:
    """Every transcribed prompt of the installed packages, sorted by name."""
    out = []
    for language, folder in VOICES.items():
        root = sounds / folder
        if not root.is_dir():
            continue
        for key, text in sorted(transcripts(language, docs).items()):
            path, words = root / f"{key}.g722", clean(text)
            if words and path.exists():
                out.append(Prompt(f"{language}/{key}", language, folder, words, path))
    return out


def read_g722(path: Path) -> np.ndarray:
    """16 kHz float32 mono samples of a raw G.722 file."""
    import av

    with av.open(str(path), format="g722") as container:
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return (np.concatenate(chunks).astype(np.float32) / 32768.0) if chunks else np.zeros(0, np.float32)


def split(items: list[Prompt], test: bool) -> list[Prompt]:
    return [p for p in items if held_out(p.name) == test]


def write_test(out: Path, items: list[Prompt]) -> None:
    """The held-out prompts that fit the window (a test row must be read whole), in ``demo_data.py``'s
    layout; each row's voice names its speaker and prompt."""
    demo_data.write_test_set(out, (
        demo_data.Utterance(p.language, p.text, audio, f"asterisk:{p.speaker}:{p.name}")
        for p in items for audio in [read_g722(p.path)]
        if audio.shape[0] <= demo_data.MAX_SECONDS * demo_data.SAMPLE_RATE))


def fits(audio: np.ndarray) -> bool:
    """Short enough that its augmented takes (slower, with silences) stay inside the window."""
    return audio.shape[0] <= demo_data.MAX_SECONDS * demo_data.SAMPLE_RATE * 0.9


def write_views(out: Path, first: int, items: list[Prompt], count: int, seed: int, whisper: Path) -> None:
    """``count`` augmented takes of each prompt of ``items`` that fits, shuffled, as shards from ``first``.

    Each take is drawn from a generator seeded by (seed, prompt, take), and shards are made
    one at a time, so memory holds one shard of audio, and a rerun (after a cut-off
    session) writes the missing shards exactly as the first run would have.
    """
    from demo_shards import SHARD, write_shards

    keep = [p for p in items if fits(read_g722(p.path))]
    order = np.random.default_rng(seed).permutation(len(keep) * count)
    for k, shard in enumerate(range(0, len(order), SHARD)):
        if (out / f"{first + k:04d}.npy").exists():
            continue
        utts = []
        for i in order[shard: shard + SHARD]:
            p, take = keep[i // count], int(i % count)
            rng = np.random.default_rng([seed, i // count, take])
            audio = demo_data.augment(rng, read_g722(p.path), p.language, demo_data.TRAIN)
            utts.append(demo_data.Utterance(p.language, demo_data.normalize(p.text), audio, f"asterisk:{p.speaker}"))
        write_shards(out, first + k, utts, whisper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the held-out prompts here")
    ap.add_argument("--shards", type=Path, help="write training shards (encoder frames) here")
    ap.add_argument("--first", type=int, default=9000, help="the first shard's number")
    ap.add_argument("--views", type=int, default=8, help="augmented takes of each training prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--whisper", type=Path, default=Path("runs/whisper-base-10s"))
    args = ap.parse_args()
    items = prompts()
    if not items:
        sys.exit(f"no Asterisk prompts under {SOUNDS}: apt-get install {' '.join(PACKAGES)}")
    print(f"{len(items)} prompts: " + ", ".join(
        f"{lang} {sum(p.language == lang for p in items)}" for lang in VOICES))
    if args.out:
        write_test(args.out, split(items, test=True))
    if args.shards:
        write_views(args.shards, args.first, split(items, test=False), args.views, args.seed, args.whisper)


if __name__ == "__main__":
    main()
