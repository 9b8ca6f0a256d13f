#!/usr/bin/env bash
# Train the embedded demo model in one go on a CUDA machine: synthesize feature shards on
# every CPU core, train on the GPU, export fp16, print the offline WER/CER table.
#
#   scripts/train_demo_gpu.sh OUT_DIR [TRAIN_MINUTES] [SHARDS] [SHARD_SIZE] [HELDOUT_PER_LANGUAGE]
#
# Made for a machine with no network: if the repository holds .deb/ (espeak-ng and its
# libraries, from `apt-get download espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0
# libsonic0`) or .whl/ (wheels of missing Python packages), they are unpacked under /tmp
# first. Set PYTHON to pick the interpreter (default python3). The result is
# OUT_DIR/demo (the model directory to copy to server/models/demo) and OUT_DIR/eval.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/train_demo_gpu.sh OUT_DIR [TRAIN_MINUTES] [SHARDS] [SHARD_SIZE] [HELDOUT_PER_LANGUAGE]}
minutes=${2:-6}
shards=${3:-32}
size=${4:-2000}
heldout=${5:-40}
py=${PYTHON:-python3}
mkdir -p "$out"
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
espeak-ng -v en --stdout "check" >/dev/null

t0=$(date +%s)
workers=$(nproc)
per=$(( (shards + workers - 1) / workers ))
pids=()
for ((w = 0; w * per < shards; w++)); do
  first=$((w * per)); count=$(( shards - first < per ? shards - first : per ))
  "$py" scripts/train_demo.py --data "$out/shards" --shard-size "$size" --make-shards "$first" "$count" \
    >"$out/synth_$w.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "synthesized $shards shards of $size in $(( $(date +%s) - t0 )) s on $workers cores"

# Stage 1 (40% of the minutes): CTC alone, one target per character, which teaches the
# acoustic side fastest. Stage 2: CTC on the canvas's own subword ids, then also denoising,
# half the rows starting from the model's own CTC reading (see docs/demo-model.md).
stage1=$(( minutes * 2 / 5 > 0 ? minutes * 2 / 5 : 1 ))
"$py" scripts/train_demo.py --data "$out/shards" --state "$out/stage1.pt" --out "$out/stage1" \
  --minutes "$stage1" --batch 64 --eval-every 500 --ctc-units chars --ctc-first 1e-9 --joint-by 2 \
  2>&1 | tee "$out/train_stage1.log" | { grep -e "^eval" -e stopped || true; }
"$py" scripts/train_demo.py --data "$out/shards" --state "$out/state.pt" --out "$out/model" \
  --init-from "$out/stage1.pt" --minutes "$(( minutes - stage1 > 0 ? minutes - stage1 : 1 ))" --batch 64 --eval-every 500 \
  --ctc-units tokens --ctc-first 1.0 --joint-by 0.3 \
  2>&1 | tee "$out/train.log" | { grep -e "^eval" -e denois -e stopped || true; }
best="$out/model"; [ -f "$best/dgasr.json" ] || best="$out/model-last"   # best is saved once denoising is on
"$py" scripts/train_demo.py --export "$best" --out "$out/demo"
"$py" scripts/demo_data.py --out "$out/heldout" --per-language "$heldout"
"$py" scripts/eval_wer.py --model "$out/demo" --data "$out/heldout" --no-server --json "$out/eval.json"
echo "total $(( $(date +%s) - t0 )) s"
