#!/bin/bash
# session 23 call 12: the full run on the final build (d8 = 17081ba, sm_90): CUDA tests, decode/prefill tables,
# serving checks, greedy md5s
B=build-cuda/dev
for f in tq tq_tests; do xz -dc $B/d8/$f.xz > $B/d8/$f; chmod +x $B/d8/$f; done
mkdir -p $OUT/full
GEN=32 OUT=$OUT/full bash scripts/cuda-device-run.sh $B/d8 all > $OUT/full/run.log 2>&1
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
for kv in fp16 tq3 tq3+w0 tq4 k8v3; do echo "$kv $($B/d8/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"; done > $OUT/full/md5.txt
grep -E "^\[  (PASSED|FAILED)" $OUT/full/cuda_tests.log; cat $OUT/full/md5.txt; grep -E "^\|" $OUT/full/bench_depth.log | head -30; grep -iE "PASS|FAIL" $OUT/full/serve_*.log | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
