"""Random espeak-ng voice variants: a speaker of its own for each training utterance.

Why: espeak-ng ships ~90 named voice variants, and the demo was trained on ~70 of them. A
variant is a small text file of synthesizer settings (pitch range, each formant's
frequency, height and width, flutter, roughness, voicing, consonant strength, the Klatt
mode), so ~70 variants are ~70 points in that space, each heard thousands of times, and the
model learns those points rather than the space: its errors on the held-out variants run
from 14% (klatt3) to 38% (travis) on the development set. Drawing the settings at random
gives every utterance a new point. The frequencies of formants 1-8 move together by one
factor (a longer or shorter vocal tract, as between people) with a little jitter each; in
three voices of ten one or two of formants 1-5 move on their own, far (half to 1.4x, their
height down to a twentieth), and four in ten have a ``tone`` curve, an equaliser over the
spectrum. The held-out ``travis`` and ``steph2``, the worst read variants in five languages
of six, do both (travis's first and fourth formants at half, steph2's fourth at 9% height),
which the random voices drew neither of before 2026-12-08.

The held-out variants' files are never read, and Klatt mode 3 (the held-out ``klatt3``)
is never drawn; random settings do cover the region those variants lie in, as a population of
speakers would.

espeak-ng reads variants only from its data folder's ``voices/!v``, so this module builds a
private data folder (links to the system's, plus a variants folder of its own) and
synthesis passes it with ``--path``. Each random variant is written just before it speaks and
removed after (:func:`forget`).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["PREFIX", "data_path", "forget", "random_variant", "write_variant"]

PREFIX = "rnd-"  # the names of random variants: PREFIX + the crc32 of their settings
_KLATT_MODES = (1, 2, 4, 5, 6)  # 3 is the held-out klatt3


def random_variant(rng: np.random.Generator) -> str:
    """A variant file's text: settings drawn around espeak-ng's own variants' ranges."""
    tract = rng.uniform(0.86, 1.22)  # formants 1-8 scale together
    low = int(rng.uniform(60, 220))
    lines = ["language variant", "name random", f"pitch {low} {low + int(rng.uniform(30, 150))}"]
    apart = set(rng.choice(np.arange(1, 6), size=int(rng.integers(1, 3)), replace=False)) if rng.random() < 0.3 else set()
    for k in range(9):
        freq = 100 * (rng.uniform(0.92, 1.08) if k == 0 else tract * rng.uniform(0.95, 1.05))
        height = rng.uniform(65, 135)
        if k in apart:  # a formant of its own, far from where the tract puts the others
            freq, height = freq * rng.uniform(0.5, 1.4), height * rng.uniform(0.05, 1.5)
        lines.append(f"formant {k} {freq:.0f} {height:.0f} {rng.uniform(75, 150):.0f}")
    lines += [f"flutter {rng.integers(0, 7)}", f"roughness {rng.integers(0, 5)}",
              f"voicing {rng.integers(80, 221)}", f"consonants {rng.integers(70, 141)} {rng.integers(70, 201)}"]
    if rng.random() < 0.4:  # an equaliser over the spectrum: up to 4 (Hz, amplitude) points, as a microphone colours
        hz = np.sort(rng.choice(np.arange(100, 4001, 50), size=int(rng.integers(2, 5)), replace=False))
        lines.append("tone " + " ".join(f"{f} {rng.integers(10, 256)}" for f in hz))
    if rng.random() < 0.15:
        lines.append("breath " + " ".join(str(int(x)) for x in rng.integers(0, 4, 8)))
    if rng.random() < 0.2:
        lines.append(f"echo {rng.integers(60, 150)} {rng.integers(5, 20)}")
    if rng.random() < 0.2:
        lines.append(f"klatt {_KLATT_MODES[rng.integers(len(_KLATT_MODES))]}")
    return "\n".join(lines) + "\n"


def write_variant(text: str) -> str:
    """Save a variant's settings in the private data folder; returns its name for ``-v base+name``."""
    name = f"{PREFIX}{zlib.crc32(text.encode()):08x}"
    path = Path(data_path()) / "espeak-ng-data" / "voices" / "!v" / name
    if not path.exists():
        part = path.with_suffix(f".{os.getpid()}")
        part.write_text(text)
        part.replace(path)
    return name


def forget(name: str) -> None:
    """Remove a random variant once spoken. espeak-ng lists every file of ``voices/`` (at most
    349) to find a voice, so a folder that keeps its random variants soon fails to find any
    ("The specified espeak-ng voice does not exist")."""
    (Path(data_path()) / "espeak-ng-data" / "voices" / "!v" / name).unlink(missing_ok=True)


@lru_cache(maxsize=1)
def data_path() -> str:
    """A private espeak-ng data folder (``--path``): the system's files, linked, and a variants
    folder that holds the system's variants and the random ones."""
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Data at:\s*(\S+)", version)
    if not found:
        raise RuntimeError(f"espeak-ng --version does not say where its data is: {version!r}")
    system = Path(found.group(1))
    root = Path(tempfile.mkdtemp(prefix="dgasr-espeak-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = root / "espeak-ng-data"
    variants = data / "voices" / "!v"
    variants.mkdir(parents=True)
    for entry in system.iterdir():
        if entry.name != "voices":
            (data / entry.name).symlink_to(entry)
    for entry in (system / "voices").iterdir():
        if entry.name != "!v":
            (data / "voices" / entry.name).symlink_to(entry)
    for entry in (system / "voices" / "!v").iterdir():
        (variants / entry.name).symlink_to(entry)
    return str(root)
