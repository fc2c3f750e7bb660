#!/bin/bash
# session 20 call 7: v25g (max reduction only when a lane's score grows it; l reduced once) — tests, A/B against new9, then the full run of new10
B=build-cuda/dev
for v in new9 new10; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
xz -dc $B/new10/tq_tests.xz > $B/new10/tq_tests; chmod +x $B/new10/tq_tests
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
$B/new9/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
ROUNDS=3 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab bash scripts/cuda-ab.sh new9=$B/new9/tq new10=$B/new10/tq | tee $OUT/ab.txt
mkdir -p $OUT/full
GEN=32 OUT=$OUT/full bash scripts/cuda-device-run.sh $B/new10 all > $OUT/full/run.log 2>&1
for kv in fp16 tq3 tq3+w0; do echo "$kv $($B/new10/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"; done > $OUT/full/md5.txt
grep -E "^\[  (PASSED|FAILED)|cuda attention" $OUT/full/cuda_tests.log; cat $OUT/full/md5.txt; grep -E "^\|" $OUT/full/bench_depth.log | head -14; grep -iE "PASS|FAIL" $OUT/full/serve_*.log | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
