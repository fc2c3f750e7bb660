#!/usr/bin/env bash
# Decode tok/s of the Qwen3.5-0.8B preset (random weights, MLX 4-bit) with the fp16 and
# the tq3 cache at 1K and 8K tokens of context, on this machine's CPU, with achieved GB/s.
# usage: scripts/bench-cpu-0.8b.sh [MODEL_DIR] [GEN_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh python3  # (reads the JSON it gets back)
TQ=./build/tq
MODEL=${1:-/tmp/tq-qwen35-0.8b-mlx4}
GEN=${2:-32}
[ -f "$MODEL/config.json" ] || $TQ make-model --preset 0.8b --dtype mlx4 --out "$MODEL" >/dev/null
TEXT=tests/data/train/wiki.test.raw
WEIGHTS=$($TQ info -m "$MODEL" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["weight_bytes"])')
echo "| kv | context | decode tok/s | prefill tok/s | KV MB | GB/s (weights + KV per token) |"
echo "|---|---:|---:|---:|---:|---:|"
for ctx in 1024 8192; do
  for kv in fp16 tq3; do
    J=$($TQ generate -m "$MODEL" -f "$TEXT" --prompt-tokens $ctx -n "$GEN" --temp 0 --kv $kv --json 2>/dev/null)
    python3 - "$J" "$WEIGHTS" "$kv" "$ctx" <<'PY'
import json, sys
j = json.loads(sys.argv[1]); w = int(sys.argv[2])
tps = j["decode_tok_per_s"]
print(f"| {sys.argv[3]} | {sys.argv[4]} | {tps:.1f} | {j['prefill_tok_per_s']:.1f} | {j['kv_bytes']/1e6:.1f} | {(w + j['kv_bytes']) * tps / 1e9:.2f} |")
PY
  done
done
