#!/bin/bash
# session 22 call 6: GPU session files for caches with one dense side (k16v3), the attention test's mirror for
# every code cache: the whole CUDA suite, then the attention and session tests over 6 fresh seeds
B=build-cuda/dev
xz -dc $B/t3/tq_tests.xz > $B/t3/tq_tests; chmod +x $B/t3/tq_tests
export LD_LIBRARY_PATH=$PWD/$B/lib
SRC=$(strings $B/t3/tq_tests | grep -m1 -oE '^/.*/tests/(data$|data/|test_[a-z0-9_]+\.cc$)' | sed -E 's#/tests/.*##')
[ -n "$SRC" ] && [ ! -e "$SRC" ] && mkdir -p "$(dirname "$SRC")" && ln -s "$PWD" "$SRC"
$B/t3/tq_tests --gtest_filter='Cuda*' > $OUT/suite.log 2>&1
tail -3 $OUT/suite.log
for i in $(seq 1 6); do
  $B/t3/tq_tests --gtest_filter='Cuda.AttentionMatchesCpuSlot:Cuda.SessionFilesMoveBetweenCpuAndGpu' > $OUT/fresh_$i.log 2>&1
done
grep -h "k16v3" $OUT/*.log | head -12
grep -h "Failure" -A3 $OUT/*.log | head -20
grep -c "PASSED  \]" $OUT/*.log
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
