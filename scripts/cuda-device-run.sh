#!/usr/bin/env bash
# The CUDA backend's evidence on a GPU machine, in one call: parity tests (GPU vs CPU),
# then speed on the Qwen3.5-9B preset (random MLX 4-bit weights, real shapes): decode at
# depths 0..128K and prefill per cache policy (into an empty cache and appended at 32K and
# 128K: PREFILL_DEPTHS), copy bandwidth, resident GPU memory; then
# `tq serve --device cuda` (sessions on the GPU): a repeated greedy request, resumed from
# its session, must give the same text, a multi-turn load test must complete, and after a
# restart on the same --prompt-cache the request resumes from the session's file.
# usage: scripts/cuda-device-run.sh BIN_DIR [tests|bench|serve|all] [DEPTHS] [POLICIES]
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
# The test binary has the source tree's absolute path compiled in (its data paths and its
# sources' names begin with it).
SRC=$(strings "$BIN/tq_tests" | grep -m1 -oE '^/.*/tests/(data$|data/|test_[a-z0-9_]+\.cc$)' | sed -E 's#/tests/.*##')
if [ -z "$SRC" ]; then echo "warning: no source path found in $BIN/tq_tests: tests reading tests/data may fail" >&2
elif [ ! -e "$SRC" ]; then mkdir -p "$(dirname "$SRC")" && ln -s "$PWD" "$SRC"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  "$BIN/tq_tests" --gtest_filter='Cuda*' 2>&1 | tee "$OUT/cuda_tests.log" | grep -E '^\[|cuda\]' | grep -v '^\[seed\]'
fi
if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  M=/tmp/tq-qwen35-9b-mlx4
  [ -f "$M/config.json" ] || (time "$BIN/tq" make-model --preset 9b --dtype mlx4 --out "$M") 2>&1 | tail -4
  "$BIN/tq" bench-depth -m "$M" --device cuda --kv "$KV" --depths "$DEPTHS" --gen ${GEN:-64} --prefill 512,8192 \
    --prefill-depths "${PREFILL_DEPTHS:-32768,131072}" --json "$OUT/bench_depth.json" 2>&1 | tee "$OUT/bench_depth.log"
fi
if [ "$WHAT" = serve ] || [ "$WHAT" = all ]; then
  # Starts `tq serve --device cuda` on the trained model with policy $1 and prompt cache $2; sets PID and PORT.
  start() {
    "$BIN/tq" serve --device "${SERVE_DEVICE:-cuda}" -m tests/data/trained_qwen35 --kv "$1" --port 0 --parallel 4 --prompt-cache "$2" \
      >"$OUT/serve_$1.out" 2>>"$OUT/serve_$1.err" &
    PID=$!
    for _ in $(seq 1 600); do grep -q "ready" "$OUT/serve_$1.out" 2>/dev/null && break; sleep 0.1; done
    PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$OUT/serve_$1.out" | head -1)
  }
  # A greedy chat request twice (the second resumes from the session: same text); with
  # "restart", once against a server restarted on the same prompt cache (the session
  # comes back from its file: resumed, and the text of the first run's file).
  check() {
    python3 - "$PORT" "$1" "$2" "$OUT/serve_$1.first" <<'PY' 2>&1 | tee -a "$OUT/serve_$1.log"
import json, sys, urllib.request
port, kv, mode, first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def post(body):
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))
msg = [{"role": "user", "content": "Tell me about the history of the river and the town beside it."}]
text = lambda r: r["choices"][0]["message"]["content"]
cached = lambda r: r["usage"]["prompt_tokens_details"]["cached_tokens"]
r1 = post({"messages": msg, "max_tokens": 48, "temperature": 0})
if mode == "first":
    r2 = post({"messages": msg, "max_tokens": 48, "temperature": 0})
    open(first, "w").write(text(r1))
    ok, n, what = text(r2) == text(r1), cached(r2), "repeated greedy request: same text"
else:
    ok, n, what = text(r1) == open(first).read(), cached(r1), "after a restart on the prompt cache: same text as before"
b = r2 if mode == "first" else r1
ok = ok and n > 0
print(f"[serve] {kv}: {what} {ok}, resumed {n} of {b['usage']['prompt_tokens']} prompt tokens: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
  }
  for kv in fp16 tq3; do
    rm -rf "$OUT/pc_$kv"
    start "$kv" "$OUT/pc_$kv"
    check "$kv" first
    "$BIN/tq" load-test --url "http://127.0.0.1:$PORT" --clients 4 --requests 16 --turns 4 --max-tokens 24 \
      2>&1 | tee -a "$OUT/serve_$kv.log"
    kill -TERM "$PID"
    wait "$PID"
    echo "[serve] $kv: server exit $?, $(ls "$OUT/pc_$kv" | wc -l) session files" | tee -a "$OUT/serve_$kv.log"
    start "$kv" "$OUT/pc_$kv"
    check "$kv" restart
    kill -TERM "$PID"
    wait "$PID"
    # The session files (≈ 130 MB in the v24 run) have served their check; left in $OUT they
    # made the logs too large to bring back from the GPU machine.
    rm -rf "$OUT/pc_$kv" "$OUT/serve_$kv.first"
  done
fi
