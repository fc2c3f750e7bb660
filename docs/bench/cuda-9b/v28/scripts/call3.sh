#!/bin/bash
# session 23 calls 3 and 4 (the same script; call 3 ran the first build, call 4 the mended one): the direct
# path for 4-bit codes (d4: build of the working tree, sm_90) — CUDA tests, greedy texts, then A/B: d4 against
# itself with TQ_CUDA_DIRECT4=0 (tq4 through the tile path: main's kernels) and CI's build of main (different
# build configuration: a reference only)
B=build-cuda/dev
for v in d4 ci; do for f in tq tq_tests; do [ -f $B/$v/$f.xz ] && { xz -dc $B/$v/$f.xz > $B/$v/$f; chmod +x $B/$v/$f; }; done; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/d4 tests 2>&1 | tail -4
grep -E 'tq4' $OUT/tests/cuda_tests.log | head -20
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/d4/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in d4 d4off; do for kv in fp16 tq3 tq4; do
  e=""; [ $v = d4off ] && e="TQ_CUDA_DIRECT4=0"
  env $e $B/d4/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
md5sum $OUT/text_*.txt
ROUNDS=2 KV=fp16,tq4,tq3 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh d4off=$B/d4/tq,TQ_CUDA_DIRECT4=0 d4=$B/d4/tq ci=$B/ci/tq 2>&1 | tee $OUT/ab.txt | tail -16
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
