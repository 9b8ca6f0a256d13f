#!/usr/bin/env bash
# Train the embedded demo model in one go on a CUDA machine, inside a wall-clock budget:
# synthesize speech on all but two CPU cores for as long as training runs (the trainer
# picks up new shards as they land), train both stages on the GPU, export fp16, and print
# the offline WER/CER table on a held-out set synthesized alongside.
#
#   scripts/train_demo_gpu.sh OUT_DIR [BUDGET_SECONDS] [BATCH] [SHARD_SIZE] [HELDOUT_PER_LANGUAGE]
#
# BUDGET_SECONDS (default 540) is the whole run, setup to table; about 100 s of it are
# kept for the export and the evaluation. Made for a machine with no network: if the
# repository holds .deb/ (espeak-ng and its libraries, from `apt-get download espeak-ng
# libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0`) or .whl/ (wheels of missing Python
# packages), they are unpacked under /tmp first. Set PYTHON to pick the interpreter
# (default python3); set INIT_FROM to continue from an earlier run's model directory
# instead of starting from scratch. The result is OUT_DIR/demo (the model directory to
# copy to server/models/demo), OUT_DIR/eval.json and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_demo_gpu.sh OUT_DIR [BUDGET_SECONDS] [BATCH] [SHARD_SIZE] [HELDOUT_PER_LANGUAGE]}
budget=${2:-540}
batch=${3:-256}
size=${4:-500}
heldout=${5:-40}
py=${PYTHON:-python3}
t0=$(date +%s)
mkdir -p "$out"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'echo "train_demo_gpu.sh: failed; logs are in $out" >&2' ERR

if [ -d .deb ]; then
  for f in .deb/*.deb; do dpkg -x "$f" /tmp/debroot; done
  lib=/tmp/debroot/usr/lib/x86_64-linux-gnu
  export PATH=/tmp/debroot/usr/bin:$PATH LD_LIBRARY_PATH=$lib:${LD_LIBRARY_PATH:-} ESPEAK_DATA_PATH=$lib
fi
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if ! espeak-ng --version >/dev/null 2>&1; then
  # espeak-ng links libpcaudio, whose playback needs ALSA and PulseAudio libraries that a
  # bare GPU image may lack. --stdout never plays, so a libpcaudio without devices will do.
  mkdir -p /tmp/pcaudio
  cat >/tmp/pcaudio/stub.c <<'EOF'
#include <stddef.h>
#include <stdint.h>
void *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(void *o, int f, uint32_t r, uint8_t c) { return -1; }
void audio_object_close(void *o) {}
void audio_object_destroy(void *o) {}
int audio_object_write(void *o, const void *d, size_t b) { return -1; }
int audio_object_drain(void *o) { return 0; }
int audio_object_flush(void *o) { return 0; }
const char *audio_object_strerror(void *o, int e) { return "no audio device"; }
EOF
  cc -shared -fPIC -o /tmp/pcaudio/libpcaudio.so.0 /tmp/pcaudio/stub.c
  export LD_LIBRARY_PATH=/tmp/pcaudio:${LD_LIBRARY_PATH:-}
  echo "espeak-ng: using a libpcaudio without playback (no audio libraries here)"
fi
espeak-ng -v en --stdout "check" >/dev/null
"$py" -c "import jiwer, numpy, safetensors, soundfile, soxr, tokenizers, torch, transformers" \
  || { echo "missing Python packages: put their wheels in .whl/" >&2; exit 1; }
dev=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
echo "training on $dev"

# Synthesis runs until training ends: each worker owns a block of 1000 shard numbers, far
# more than it can finish, and is stopped when the trainer is done. Blocks start at shard
# 1000 (utterance seeds from 2,000,000), clear of the held-out seeds (1,000,000 + i).
workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
for ((w = 0; w < workers; w++)); do
  "$py" scripts/train_demo.py --data "$out/shards" --shard-size "$size" --make-shards $(((w + 1) * 1000)) 1000 \
    >"$out/synth_$w.log" 2>&1 &
  pids+=($!)
done
"$py" scripts/demo_data.py --out "$out/heldout" --per-language "$heldout" >"$out/heldout.log" 2>&1 &
heldout_pid=$!

# While the first shards are synthesized: two joint steps, a quick eval and a save on a
# 16-utterance shard, so a failure on this device shows in seconds, not after stage 1.
"$py" scripts/train_demo.py --data "$out/smoke/shards" --shard-size 16 --make-shards 0 1 >/dev/null
"$py" scripts/train_demo.py --data "$out/smoke/shards" --state "$out/smoke/state.pt" --out "$out/smoke/model" \
  --batch 8 --max-steps 2 --eval-every 2 --ctc-first 0 --threads 2 ${INIT_FROM:+--init-from "$INIT_FROM"} \
  >"$out/smoke.log" 2>&1 || { tail -30 "$out/smoke.log" >&2; exit 1; }
[ -d "$out/tokenizer" ] || cp -r "$out/smoke/tokenizer" "$out/tokenizer"
echo "smoke test passed: joint training, eval and save on $dev"

# Stage 1 (40% of the training time): CTC alone, one target per character, which teaches
# the acoustic side fastest. Stage 2: CTC on the canvas's own subword ids, then also
# denoising, half the rows starting from the model's own CTC reading (docs/demo-model.md).
# With INIT_FROM=MODEL_DIR (an earlier run's model, e.g. a CPU run's), stage 1 is skipped
# and stage 2 continues from those weights and that tokenizer for all of the time.
train=$(( budget - ($(date +%s) - t0) - 100 ))
[ "$train" -gt 60 ] || { echo "budget too small: $train s left for training" >&2; exit 1; }
common=(--data "$out/shards" --batch "$batch" --threads 2 --eval-every 500)
init=${INIT_FROM:-}
if [ -z "$init" ]; then
  "$py" scripts/train_demo.py "${common[@]}" --state "$out/stage1.pt" --out "$out/stage1" \
    --minutes "$(awk "BEGIN {print $train * 0.4 / 60}")" --ctc-units chars --ctc-first 1e-9 --joint-by 2 \
    2>&1 | tee "$out/train_stage1.log" | { grep -e "^params" -e "^eval" -e stopped || true; }
  init=$out/stage1.pt
fi
left=$(( budget - 100 - ($(date +%s) - t0) ))
"$py" scripts/train_demo.py "${common[@]}" --state "$out/state.pt" --out "$out/model" --init-from "$init" \
  --minutes "$(awk "BEGIN {print ($left > 30 ? $left : 30) / 60}")" \
  --ctc-units tokens --ctc-first 1.0 --joint-by 0.3 \
  2>&1 | tee "$out/train.log" | { grep -e "^params" -e "^initialised" -e "^eval" -e denois -e stopped || true; }
cleanup
echo "synthesized $(ls "$out"/shards/[0-9]*[0-9].npy | wc -l) shards of $size on $workers cores while training"
best="$out/model"; [ -f "$best/dgasr.json" ] || best="$out/model-last"   # best is saved once denoising is on
"$py" scripts/train_demo.py --export "$best" --out "$out/demo"
wait "$heldout_pid"
"$py" scripts/eval_wer.py --model "$out/demo" --data "$out/heldout" --no-server --device "$dev" --threads 4 --json "$out/eval.json"
echo "total $(( $(date +%s) - t0 )) s"
