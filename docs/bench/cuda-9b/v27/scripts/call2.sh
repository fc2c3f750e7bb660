#!/bin/bash
# session 22 call 2: tests of new1 (queries rotated in attn_prep, 3-bit tables from the host, a decode step's
# position and ring_lo before the wait), greedy texts, then A/B main (final) vs new1
B=build-cuda/dev
for v in final new1; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
xz -dc $B/new1/tq_tests.xz > $B/new1/tq_tests; chmod +x $B/new1/tq_tests
OUT=$OUT/tests scripts/cuda-device-run.sh $B/new1 tests 2>&1 | tail -4
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/final/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in final new1; do for kv in fp16 tq3 tq3+w0; do
  $B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
md5sum $OUT/text_*.txt
ROUNDS=3 KV=fp16,tq3 DEPTHS=0,4096,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh main=$B/final/tq new1=$B/new1/tq 2>&1 | tee $OUT/ab.txt
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
