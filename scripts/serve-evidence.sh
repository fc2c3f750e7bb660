#!/usr/bin/env bash
# Evidence for `tq serve`, in one run:
#  1. prompt cache file sizes per cache policy: the trained Qwen3.5-architecture model
#     reads N tokens of held-out text, the server is stopped (SIGTERM writes the session),
#     and the file's size and its KV / DeltaNet parts are listed;
#  2. a bounded load test on loopback: 8 clients x 50 requests (multi-turn chats, half
#     streamed) against the built-in model, for the fp16 and the tq3 cache.
# usage: scripts/serve-evidence.sh [TOKENS] [CLIENTS] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh python3  # (reads the JSON it gets back)
TQ=./build/tq
TOKENS=${1:-4000}
CLIENTS=${2:-8}
REQUESTS=${3:-50}
TMP=$(mktemp -d /tmp/tq-serve-evidence.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

# Starts `tq serve ARGS...` in the background; sets PID and PORT once it is ready.
start() {
  "$TQ" serve --port 0 "$@" >"$TMP/out" 2>"$TMP/err" &
  PID=$!
  for _ in $(seq 1 300); do
    grep -q "ready" "$TMP/out" 2>/dev/null && break
    sleep 0.1
  done
  PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/out" | head -1)
}
stop() {
  kill -TERM "$PID"
  wait "$PID"
}

echo "## Prompt cache files per policy (trained Qwen3.5-architecture model, $TOKENS prompt tokens)"
echo
echo "| kv | file bytes | KV bytes | DeltaNet bytes | KV vs fp16 | file vs fp16 |"
echo "|---|---:|---:|---:|---:|---:|"
FP16_KV=0
FP16_FILE=0
for kv in fp16 tq4 tq3 k8v3 tq3+w0; do
  start -m tests/data/trained_qwen35 --kv "$kv" --prompt-cache "$TMP/cache-$kv"
  python3 - "$PORT" "$TOKENS" <<'PY'
import json, sys, urllib.request
port, n = sys.argv[1], int(sys.argv[2])
def post(path, body):
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))
text = open("tests/data/trained_qwen35/heldout.txt", encoding="utf-8").read()
ids = post("/tokenize", {"content": text})["tokens"][:n]
assert len(ids) == n, f"held-out text has only {len(ids)} tokens"
post("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0})
PY
  stop
  LINE=$(grep "wrote" "$TMP/err" | tail -1)
  FILE=$(echo "$LINE" | sed -n 's/.*tokens, \([0-9]*\) bytes.*/\1/p')
  KVB=$(echo "$LINE" | sed -n 's/.*(KV \([0-9]*\) bytes.*/\1/p')
  DN=$(echo "$LINE" | sed -n 's/.*DeltaNet states \([0-9]*\) bytes.*/\1/p')
  NT=$(echo "$LINE" | sed -n 's/.*: \([0-9]*\) tokens,.*/\1/p')
  if [ "$kv" = fp16 ]; then FP16_KV=$KVB; FP16_FILE=$FILE; fi
  python3 -c "print(f'| $kv ($NT tokens) | $FILE | $KVB | $DN | {$FP16_KV/$KVB:.2f}x smaller | {$FP16_FILE/$FILE:.2f}x smaller |')"
done

echo
echo "## Load test: $CLIENTS clients x $REQUESTS requests, built-in model, --parallel 4"
for kv in fp16 tq3; do
  echo
  echo "### --kv $kv"
  echo '```'
  start --kv "$kv" --parallel 4
  "$TQ" load-test --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --requests "$REQUESTS" --turns 5 \
    --max-tokens 32 2>/dev/null
  python3 - "$PORT" <<'PY'
import sys, urllib.request
m = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
keep = ("tq_http_requests_total", "tq_prompt_tokens", "tq_generated_tokens_total", "tq_decode_tokens_per_second",
        "tq_kv_bytes_resident", "tq_sessions ")
for line in m.splitlines():
    if not line.startswith("#") and line.startswith(keep):
        print(line)
PY
  stop
  echo '```'
done
