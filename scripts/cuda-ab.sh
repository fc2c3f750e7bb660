#!/usr/bin/env bash
# Decode speed of several builds or settings side by side, in one call on the GPU machine:
# each round runs every variant once, in the order given (so drift hits them alike), and
# prints its bench-depth rows. The base binary belongs in every comparison: a knob set to
# "off" in an experimental build is not the build it would replace (docs/PERF.md, v14b).
#
# usage: scripts/cuda-ab.sh LABEL=BINARY[,VAR=VALUE...] ...
#   e.g. scripts/cuda-ab.sh base=build-cuda/dev/base/tq new=build-cuda/dev/tq new3=build-cuda/dev/tq,TQ_CUDA_RING=3
# environment: ROUNDS (2), KV (fp16,tq3), DEPTHS (0,32768), GEN (128), DEVICE (cuda),
#   MODEL (/tmp/tq-qwen35-9b-mlx4: made with the first variant's binary if missing), OUT (./cuda-out/ab)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-2} KV=${KV:-fp16,tq3} DEPTHS=${DEPTHS:-0,32768} GEN=${GEN:-128} DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-/tmp/tq-qwen35-9b-mlx4} OUT=${OUT:-cuda-out/ab}
mkdir -p "$OUT"
labels=() bins=() envs=()
for v in "$@"; do
  label=${v%%=*} rest=${v#*=}
  if [ "$label" = "$v" ] || [ -z "$label" ] || [ -z "$rest" ]; then
    echo "error: variant '$v': expected LABEL=BINARY[,VAR=VALUE...]" >&2
    exit 2
  fi
  bin=${rest%%,*}
  [ -x "$bin" ] || { echo "error: variant '$label': '$bin' is not an executable file" >&2; exit 2; }
  e=""
  [ "$bin" != "$rest" ] && e=${rest#*,}
  labels+=("$label") bins+=("$bin") envs+=("${e//,/ }")
  # the shared libraries carried beside a binary (BIN_DIR/lib, as scripts/cuda-device-run.sh expects)
  for l in "$(dirname "$bin")/lib" "$(dirname "$bin")/../lib"; do
    [ -d "$l" ] && LD_LIBRARY_PATH="$(cd "$l" && pwd):${LD_LIBRARY_PATH:-}"
  done
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
if [ ! -f "$MODEL/config.json" ]; then
  echo "making $MODEL with ${bins[0]}"
  "${bins[0]}" make-model --preset 9b --dtype mlx4 --out "$MODEL" > "$OUT/make-model.log" 2>&1 ||
    { echo "error: make-model failed (see $OUT/make-model.log)" >&2; exit 1; }
fi
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!labels[@]}"; do
    log="$OUT/${labels[$i]}_$r.log"
    # shellcheck disable=SC2086  # the variables are split on purpose
    env ${envs[$i]} timeout 300 "${bins[$i]}" bench-depth -m "$MODEL" --device "$DEVICE" --kv "$KV" --depths "$DEPTHS" \
      --gen "$GEN" --prefill 16 > "$log" 2>&1
    rc=$?
    printf '%-12s round %s rc=%s %s\n' "${labels[$i]}" "$r" "$rc" "$(grep -E '^\| [a-z0-9+]+ \|' "$log" | grep -v '^| kv' | tr '\n' ' ')"
  done
done
# Means over the rounds: decode tok/s per (kv, depth) and variant, each variant against the
# first (its % change), and each code cache against fp16 within the variant (its ratio).
echo
echo "means of $ROUNDS rounds (decode tok/s; vs ${labels[0]}; code caches: x fp16 of the same variant)"
for i in "${!labels[@]}"; do
  for r in $(seq 1 "$ROUNDS"); do
    awk -v label="${labels[$i]}" '$2 == "depth" && $5 == "tok/s" { sub(":", "", $3); print label, $1, $3, $4 }' \
      "$OUT/${labels[$i]}_$r.log"
  done
done | awk -v first="${labels[0]}" '
  { key = $2 " " $3; s[$1, key] += $4; n[$1, key]++
    if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
    if (!($1 in lab)) { lab[$1] = 1; labs[++nl] = $1 } }
  END {
    printf "%-8s %8s", "kv", "depth"; for (j = 1; j <= nl; ++j) printf " %24s", labs[j]; print ""
    for (k = 1; k <= nk; ++k) {
      split(keys[k], kd, " "); printf "%-8s %8s", kd[1], kd[2]
      for (j = 1; j <= nl; ++j) {
        m = n[labs[j], keys[k]] ? s[labs[j], keys[k]] / n[labs[j], keys[k]] : 0
        b = n[first, keys[k]] ? s[first, keys[k]] / n[first, keys[k]] : 0
        f = n[labs[j], "fp16 " kd[2]] ? s[labs[j], "fp16 " kd[2]] / n[labs[j], "fp16 " kd[2]] : 0
        cell = sprintf("%.1f", m)
        if (j > 1 && b > 0) cell = cell sprintf(" %+.1f%%", 100 * (m / b - 1))
        if (kd[1] != "fp16" && f > 0) cell = cell sprintf(" %.3fx", m / f)
        printf " %24s", cell
      }
      print ""
    } }'
