set -u
B=build-cuda/dev; M=/tmp/tq-qwen35-9b-mlx4
export LD_LIBRARY_PATH=$PWD/$B/lib
mkdir -p $OUT/tests
OUT=$OUT/tests bash scripts/cuda-device-run.sh $B tests 2>&1 | grep -E "OK|FAIL|PASS|rror|int8|cuda\]|Failure|Expected|actual|which is" | tail -40
( time $B/tq make-model --preset 9b --dtype mlx4 --out $M ) 2>&1 | tail -3
for b in $B/base/tq $B/tq $B/base/tq $B/tq; do echo "== $b"; $b bench-depth -m $M --device cuda --kv fp16,tq3 --depths 0,131072 --gen 64 --prefill 8 2>&1 | grep -E "depth" ; done
for b in $B/base/tq $B/tq; do echo "== $b"; $b generate -m $M --device cuda --kv tq3 -p "Hello there" -n 64 --temp 0 2>&1 | grep -a "tok/s" | cut -c1-300; done
