#!/bin/bash
# session 23 call 6: the 4-bit direct path's values through the byte table (d4v) — CUDA tests, greedy texts, A/B
# against d4i (call 5's build: K's scores int8, V in the fp16 form), same build configuration
B=build-cuda/dev
for v in d4i d4v; do for f in tq tq_tests; do [ -f $B/$v/$f.xz ] && { xz -dc $B/$v/$f.xz > $B/$v/$f; chmod +x $B/$v/$f; }; done; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/d4v tests 2>&1 | tail -4
grep -E '\[cuda attention\]' $OUT/tests/cuda_tests.log
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/d4v/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in d4i d4v; do for kv in fp16 tq3 tq4 tq4+w0; do
  $B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
md5sum $OUT/text_*.txt
ROUNDS=2 KV=fp16,tq4,tq3 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh d4i=$B/d4i/tq d4v=$B/d4v/tq 2>&1 | tee $OUT/ab.txt | tail -14
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
