#!/bin/bash
# session 23 call 5: the 4-bit direct path's K scores on the int8 tensor cores (d4i) — CUDA tests, greedy texts,
# A/B against d4 (call 4's build: the 4-bit direct path in the fp16 form), same build configuration
B=build-cuda/dev
for v in d4 d4i; do for f in tq tq_tests; do [ -f $B/$v/$f.xz ] && { xz -dc $B/$v/$f.xz > $B/$v/$f; chmod +x $B/$v/$f; }; done; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/d4i tests 2>&1 | tail -4
grep -E '\[cuda attention\]' $OUT/tests/cuda_tests.log
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/d4i/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in d4 d4i; do for kv in fp16 tq3 tq4 tq4+w0; do
  $B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
md5sum $OUT/text_*.txt
ROUNDS=2 KV=fp16,tq4,tq3 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh d4=$B/d4/tq d4i=$B/d4i/tq 2>&1 | tee $OUT/ab.txt | tail -14
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
