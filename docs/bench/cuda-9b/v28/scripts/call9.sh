#!/bin/bash
# session 23 call 9: the full run on the final build (d4p = cf5408c, sm_90): CUDA tests, decode/prefill tables,
# serving checks, greedy md5s
B=build-cuda/dev
for f in tq tq_tests; do xz -dc $B/d4p/$f.xz > $B/d4p/$f; chmod +x $B/d4p/$f; done
mkdir -p $OUT/full
GEN=32 OUT=$OUT/full bash scripts/cuda-device-run.sh $B/d4p all > $OUT/full/run.log 2>&1
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
for kv in fp16 tq3 tq3+w0 tq4; do echo "$kv $($B/d4p/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"; done > $OUT/full/md5.txt
grep -E "^\[  (PASSED|FAILED)" $OUT/full/cuda_tests.log; cat $OUT/full/md5.txt; grep -E "^\|" $OUT/full/bench_depth.log | head -30; grep -iE "PASS|FAIL" $OUT/full/serve_*.log | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
