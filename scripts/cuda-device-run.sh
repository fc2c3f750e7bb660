#!/usr/bin/env bash
# The CUDA backend's evidence on a GPU machine, in one call: parity tests (GPU vs CPU),
# then speed on the Qwen3.5-9B preset (random MLX 4-bit weights, real shapes): decode at
# depths 0..128K and prefill per cache policy, copy bandwidth, resident GPU memory.
# usage: scripts/cuda-device-run.sh BIN_DIR [tests|bench|all] [DEPTHS] [POLICIES]
#   BIN_DIR holds tq, tq_tests and lib/ (shared libraries the machine may lack).
# Logs go to $OUT (default ./cuda-out).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build-cuda/dev}
WHAT=${2:-all}
DEPTHS=${3:-0,4096,16384,32768,65536,131072}
KV=${4:-fp16,tq4,tq3,k8v3}
OUT=${OUT:-cuda-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$BIN/lib:${LD_LIBRARY_PATH:-}"
# The test binary has the source tree's absolute path compiled in.
SRC=$(strings "$BIN/tq_tests" | grep -m1 -o '^/.*/tests/data$' | sed 's|/tests/data$||')
if [ -n "$SRC" ] && [ ! -e "$SRC" ]; then mkdir -p "$(dirname "$SRC")" && ln -s "$PWD" "$SRC"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  "$BIN/tq_tests" --gtest_filter='Cuda*' 2>&1 | tee "$OUT/cuda_tests.log" | grep -E '^\[|cuda\]' | grep -v '^\[seed\]'
fi
if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  M=/tmp/tq-qwen35-9b-mlx4
  [ -f "$M/config.json" ] || (time "$BIN/tq" make-model --preset 9b --dtype mlx4 --out "$M") 2>&1 | tail -4
  "$BIN/tq" bench-depth -m "$M" --device cuda --kv "$KV" --depths "$DEPTHS" --gen ${GEN:-64} --prefill 512,8192 \
    --json "$OUT/bench_depth.json" 2>&1 | tee "$OUT/bench_depth.log"
fi
