#!/bin/bash
# session 23 call 11: k8v3 on the direct path (d8: 8-bit K looked up one code at a time in the shared table, 3-bit V
# as tq3's) — CUDA tests, greedy texts, A/B against d4p (call 9's final build) and d8 with TQ_CUDA_DIRECT4=0
B=build-cuda/dev
for v in d4p d8; do for f in tq tq_tests; do [ -f $B/$v/$f.xz ] && { xz -dc $B/$v/$f.xz > $B/$v/$f; chmod +x $B/$v/$f; }; done; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/d8 tests 2>&1 | tail -4
grep -E '\[cuda attention\]' $OUT/tests/cuda_tests.log
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/d8/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in d4p d8; do for kv in fp16 tq3 k8v3; do
  $B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
md5sum $OUT/text_*.txt
ROUNDS=2 KV=fp16,k8v3,tq3 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh d4p=$B/d4p/tq d8=$B/d8/tq d8off=$B/d8/tq,TQ_CUDA_DIRECT4=0 2>&1 | tee $OUT/ab.txt | tail -14
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
