#!/usr/bin/env bash
# Packs what scripts/train_demo_live.py needs on a bare GPU machine that reaches no registry
# (espeak-ng, the Python packages demo_data uses, wordfreq's word lists, the backbone's
# embeddings) into .gpu/, beside the repository, and prints the command to run there.
#
# espeak-ng comes from Debian's packages, unpacked into .gpu/espeak with its own library
# folder. Its libpcaudio dependency (sound-card output, which pulls in PulseAudio and ALSA)
# is replaced by a stub: `espeak-ng --stdout` never opens an audio device. Only the data of
# the six languages is kept (4.9 MB in all).
#
# The repository travels too (64 MiB in all on the lent machine): the script needs only the
# demo model's whisper/, projector/, tokenizer/ and dgasr.json, so move backbone/ and
# lexicon/ aside for the run if the tree is too big.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/espeak/bin .gpu/espeak/lib .gpu/espeak/espeak-ng-data .gpu/whl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

tmp=$(mktemp -d)
(cd "$tmp" && apt-get download espeak-ng libespeak-ng1 libsonic0 espeak-ng-data >/dev/null)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
lib="$tmp/root/usr/lib/x86_64-linux-gnu"
cp "$tmp/root/usr/bin/espeak-ng" .gpu/espeak/bin/
cp -L "$lib/libespeak-ng.so.1" "$lib/libsonic.so.0" .gpu/espeak/lib/
for f in "$lib"/espeak-ng-data/*; do
  case "$(basename "$f")" in *_dict) ;; *) cp -r "$f" .gpu/espeak/espeak-ng-data/ ;; esac
done
for lang in en de fr es hi cmn; do cp "$lib/espeak-ng-data/${lang}_dict" .gpu/espeak/espeak-ng-data/; done
cat > "$tmp/pcaudio.c" <<'EOF'
/* libpcaudio stub: espeak-ng --stdout never opens an audio device. */
#include <stddef.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int f, unsigned r, unsigned char c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, size_t b) { return -1; }
int audio_object_drain(struct audio_object *o) { return 0; }
int audio_object_flush(struct audio_object *o) { return 0; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio device"; }
EOF
gcc -shared -fPIC -O2 -o .gpu/espeak/lib/libpcaudio.so.0 "$tmp/pcaudio.c"
rm -rf "$tmp"

# the lent machine runs Python 3.12 with torch, transformers and numpy, without these
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl soxr soundfile cffi pycparser
"$py" scripts/train_demo_live.py --write-words .gpu/words.json.gz
"$py" scripts/train_demo_live.py --write-embeddings server/models/demo --out .gpu/embed.safetensors
du -sh .gpu
cat <<'EOF'
On the GPU machine (carry .gpu), as one command:
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
  export PATH=$PWD/.gpu/espeak/bin:$PATH LD_LIBRARY_PATH=$PWD/.gpu/espeak/lib ESPEAK_DATA_PATH=$PWD/.gpu/espeak
  PYTORCH_NVML_BASED_CUDA_CHECK=1 python3 scripts/train_demo_live.py --model server/models/demo \
    --embeddings .gpu/embed.safetensors --words .gpu/words.json.gz --workers 15 --minutes 8 --lr 1e-3 --out $OUT
EOF
