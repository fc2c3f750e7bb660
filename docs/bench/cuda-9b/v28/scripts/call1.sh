#!/bin/bash
# session 23 call 1: the full run on CI's Release build of 95a23d9 (CUDA archs 80;90; the code of dde3668 but for
# one test's printing): CUDA tests, decode/prefill tables, serving checks, greedy md5s
B=build-cuda/dev
for f in tq tq_tests; do xz -dc $B/ci/$f.xz > $B/ci/$f; chmod +x $B/ci/$f; done
mkdir -p $OUT/full
GEN=32 OUT=$OUT/full bash scripts/cuda-device-run.sh $B/ci all > $OUT/full/run.log 2>&1
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
for kv in fp16 tq3 tq3+w0; do echo "$kv $($B/ci/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"; done > $OUT/full/md5.txt
grep -E "^\[  (PASSED|FAILED)" $OUT/full/cuda_tests.log; cat $OUT/full/md5.txt; grep -E "^\|" $OUT/full/bench_depth.log | head -30; grep -iE "PASS|FAIL" $OUT/full/serve_*.log | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
