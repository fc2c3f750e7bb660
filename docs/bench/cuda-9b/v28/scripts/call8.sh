#!/bin/bash
# session 23 call 8: 4-bit codes in the prefill tile kernel by decode8_sym4 from a register table, its 256-dim
# 4-bit instantiation (d4p) — CUDA tests, then prefill (512 / 8192 tokens into an empty cache and appended at
# 32K / 128K) of d4p against d4v (call 7's build), 2 interleaved rounds; decode at 0 / 128K as a check
B=build-cuda/dev
for v in d4v d4p; do for f in tq tq_tests; do [ -f $B/$v/$f.xz ] && { xz -dc $B/$v/$f.xz > $B/$v/$f; chmod +x $B/$v/$f; }; done; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/d4p tests 2>&1 | tail -4
grep -E '\[cuda attention\]' $OUT/tests/cuda_tests.log
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/d4p/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
mkdir -p $OUT/pf
for r in 1 2; do for v in d4v d4p; do
  $B/$v/tq bench-depth -m $M --device cuda --kv fp16,tq4,tq3 --depths 0,131072 --gen 32 --prefill 512,8192 \
    --prefill-depths 32768,131072 > $OUT/pf/${v}_$r.log 2>&1
  echo "$v round $r"; grep -E '^\| (fp16|tq4|tq3) \|' $OUT/pf/${v}_$r.log
done; done
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
