#!/bin/bash
# session 20 call 6: the full run on the final build (dd47aa7 = new9)
B=build-cuda/dev
xz -dc $B/new9/tq.xz > $B/new9/tq; chmod +x $B/new9/tq
xz -dc $B/new9/tq_tests.xz > $B/new9/tq_tests; chmod +x $B/new9/tq_tests
mkdir -p $OUT/full
GEN=32 OUT=$OUT/full bash scripts/cuda-device-run.sh $B/new9 all > $OUT/full/run.log 2>&1
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
for kv in fp16 tq3; do echo "$kv $($B/new9/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"; done > $OUT/full/md5.txt
grep -E "^\[  (PASSED|FAILED)" $OUT/full/cuda_tests.log; cat $OUT/full/md5.txt; grep -E "^\|" $OUT/full/bench_depth.log | head -30; grep -iE "PASS|FAIL" $OUT/full/serve_*.log | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
