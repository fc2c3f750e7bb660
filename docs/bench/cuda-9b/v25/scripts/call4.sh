#!/bin/bash
# session 20 call 4: CUDA tests of new8 (v25c+d), md5s, A/B new5 (HEAD) / new7 (V8 P hi only) / new8 (+ 4 int8 chains)
B=build-cuda/dev
for v in new5 new7 new8; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
xz -dc $B/new8/tq_tests.xz > $B/new8/tq_tests; chmod +x $B/new8/tq_tests
mkdir -p $OUT/tests
OUT=$OUT/tests bash scripts/cuda-device-run.sh $B/new8 tests > /dev/null 2>&1
grep -E "^\[  (PASSED|FAILED)|cuda attention|FAILED|GPU file" $OUT/tests/cuda_tests.log | head -30
M=/tmp/tq-qwen35-9b-mlx4
export LD_LIBRARY_PATH=$PWD/$B/lib
[ -f $M/config.json ] || $B/main/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in new7 new8; do for kv in fp16 tq3 tq3+w0; do
  echo "$v $kv $($B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"
done; done | tee $OUT/md5.txt
ROUNDS=2 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab bash scripts/cuda-ab.sh new5=$B/new5/tq new7=$B/new7/tq new8=$B/new8/tq | tee $OUT/ab.txt
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
