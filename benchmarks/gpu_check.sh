#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, install the GPU build of TensorFlow into a venv (`make setup GPU=1`),
# say what TensorFlow sees (`python -m core info`), then train one ResNet-50 epoch from scratch (weights none:
# nothing to download) on BloodMNIST at 64 and 224 px with the project's own trainer, and print the images/s
# and seconds of that epoch (its training pass, read from the run's metrics.json), the precision it ran in,
# and the command's whole wall time (with TensorFlow's start, validation and the test pass).
#
# The 224 px set: $DATA_DIR/pbc_bloodmnist_224.npz when present, else the 64 px file upscaled (bicubic) into
# $OUT: the speed is what is measured here, not the accuracy.
#
# Settings (environment variables):
#   VENV=/tmp/cellscope-gpu-venv   the venv; one that already holds the GPU build is used as it is (on a
#                                  machine without internet, build it where there is one, same path)
#   DATA_DIR=../shared/data        where pbc_bloodmnist_64.npz (and optionally _224) are
#   OUT=$(mktemp -d)               runs, logs and the upscaled file go here (deleted at the end unless KEEP=1)
#   SIZES="64 224"  BATCH=128  PRECISION=auto  (auto: mixed bfloat16 on compute capability 8.0+, else float16)
#   LIMIT=N                        train on N images only (a quick look; the epoch is then not a full one)
#   ALLOW_CPU=1                    run without a GPU: a dry run of everything but the speed
# Example: benchmarks/gpu_check.sh            # on the GPU machine, from the project folder
#          ALLOW_CPU=1 LIMIT=256 SIZES=64 VENV=.venv benchmarks/gpu_check.sh   # dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-/tmp/cellscope-gpu-venv}
DATA_DIR=${DATA_DIR:-../shared/data}
SIZES=${SIZES:-64 224}
BATCH=${BATCH:-128}
PRECISION=${PRECISION:-auto}
LIMIT=${LIMIT:-}
KEEP=${KEEP:-}
if [ -z "${OUT:-}" ]; then
    OUT=$(mktemp -d -t cellscope-gpu-check.XXXXXX)
    [ -n "$KEEP" ] || trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"

if nvidia-smi -L 2>/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
elif [ -z "${ALLOW_CPU:-}" ]; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L failed); ALLOW_CPU=1 runs it on the CPU as a dry run" >&2
    exit 1
else
    echo "gpu_check: no GPU: dry run on the CPU (ALLOW_CPU=1); the speeds below are the CPU's"
fi

# The GPU build; nothing is installed when $VENV already has it (the stamp says "gpu"). A venv that has the CPU
# build is left alone unless ALLOW_CPU=1 says to use it as it is.
if [ -n "${ALLOW_CPU:-}" ] && [ -x "$VENV/bin/python" ]; then
    echo "gpu_check: using $VENV as it is"
else
    make setup GPU=1 VENV="$VENV"
fi
PY="$VENV/bin/python"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
"$PY" -m core info

NPZ_64="$DATA_DIR/pbc_bloodmnist_64.npz"
[ -f "$NPZ_64" ] || { echo "gpu_check: $NPZ_64 not found (DATA_DIR=...)" >&2; exit 1; }

npz_for() {  # the data file of a size
    local size=$1
    if [ -f "$DATA_DIR/pbc_bloodmnist_${size}.npz" ]; then
        echo "$DATA_DIR/pbc_bloodmnist_${size}.npz"
        return
    fi
    local target="$OUT/upscaled_${size}.npz"
    if [ ! -f "$target" ]; then
        "$PY" - "$NPZ_64" "$target" "$size" >&2 <<'EOF'
import sys

import numpy as np
from PIL import Image

source, target, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with np.load(source) as data:
    out = {}
    for key in data.files:
        array = data[key]
        if key.endswith("_images"):
            array = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in array])
        out[key] = array
np.savez(target, **out)
print(f"gpu_check: {target}: the 64 px images upscaled to {size} px ({len(out['train_images'])} training images)")
EOF
    fi
    echo "$target"
}

printf '\n%-6s %-10s %-15s %12s %14s %12s\n' size images precision "images/s" "epoch train s" "command s"
for size in $SIZES; do
    npz=$(npz_for "$size")
    log="$OUT/train_${size}.log"
    start=$(date +%s%N)
    if ! "$PY" -m core train --arch resnet50 --weights none --size "$size" --data "$npz" --epochs 1 \
            --batch-size "$BATCH" --precision "$PRECISION" --seed 0 --tag gpu-check \
            ${LIMIT:+--limit-train "$LIMIT"} --runs-dir "$OUT/runs" >"$log.out" 2>"$log"; then
        echo "gpu_check: training at $size px failed; the end of its log ($log):" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    wall=$(( ($(date +%s%N) - start) / 1000000 ))  # ms
    run_dir=$(tail -1 "$log.out")
    row=$("$PY" - "$run_dir" "$size" "$wall" <<'EOF'
import json
import sys
from pathlib import Path

run, size, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) / 1000
m = json.loads((run / "metrics.json").read_text())
seconds = m["train_seconds"]
images = round(m["train_images_per_second"] * seconds)
print(f"{size:<6} {images:<10} {m.get('precision', '?'):<15} {m['train_images_per_second']:>12.1f} "
      f"{seconds:>14.1f} {wall:>12.1f}")
EOF
)
    echo "$row"
done
echo
echo "gpu_check: ResNet-50 from scratch, 1 epoch, batch $BATCH; 'epoch train s' is the training pass of the epoch"
echo "(its first steps include tracing); 'command s' adds TensorFlow's start, validation and the test pass."
[ -n "$KEEP" ] && echo "gpu_check: runs and logs kept in $OUT"
exit 0
