#!/bin/bash
# session 20 call 3: CUDA tests of new6 (v25b, 4 blocks/SM), md5s, A/B main/new3/new5/new6
B=build-cuda/dev
for v in main new3 new5 new6; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
xz -dc $B/new6/tq_tests.xz > $B/new6/tq_tests; chmod +x $B/new6/tq_tests
mkdir -p $OUT/tests
OUT=$OUT/tests bash scripts/cuda-device-run.sh $B/new6 tests > /dev/null 2>&1
grep -E "^\[  (PASSED|FAILED)|cuda attention|FAILED|GPU file" $OUT/tests/cuda_tests.log | head -30
M=/tmp/tq-qwen35-9b-mlx4
export LD_LIBRARY_PATH=$PWD/$B/lib
[ -f $M/config.json ] || $B/main/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in new5 new6; do for kv in fp16 tq3 tq3+w0; do
  echo "$v $kv $($B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null | md5sum)"
done; done | tee $OUT/md5.txt
ROUNDS=2 DEPTHS=0,4096,32768,131072 GEN=64 OUT=$OUT/ab bash scripts/cuda-ab.sh main=$B/main/tq new3=$B/new3/tq new5=$B/new5/tq new6=$B/new6/tq | tee $OUT/ab.txt
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
