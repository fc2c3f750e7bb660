#!/bin/bash
# session 22 call 3: main's CUDA tests with call 2's seed (does AttentionMatchesCpuSlot fail there too?), then the
# attention test over 20 fresh seeds: the distribution of its worst GPU-vs-CPU error per policy
B=build-cuda/dev
xz -dc $B/final/tq_tests.xz > $B/final/tq_tests; chmod +x $B/final/tq_tests
export LD_LIBRARY_PATH=$PWD/$B/lib
SRC=$(strings $B/final/tq_tests | grep -m1 -oE '^/.*/tests/(data$|data/|test_[a-z0-9_]+\.cc$)' | sed -E 's#/tests/.*##')
[ -n "$SRC" ] && [ ! -e "$SRC" ] && mkdir -p "$(dirname "$SRC")" && ln -s "$PWD" "$SRC"
TQ_TEST_SEED=12193635723085305158 $B/final/tq_tests --gtest_filter='Cuda*' > $OUT/main_seed_12193635723085305158.log 2>&1
grep -E "cuda attention\]|FAILED|Failure|actual" $OUT/main_seed_12193635723085305158.log | head -20
for i in $(seq 1 20); do
  $B/final/tq_tests --gtest_filter='Cuda.AttentionMatchesCpuSlot' > $OUT/seeds_$i.log 2>&1
done
grep -h "cuda attention\] tq3 \|cuda attention\] tq3+w0\|cuda attention\] tq2" $OUT/seeds_*.log | awk '{print $3, $8}' | sort -k2 -g | tail -12
grep -c "FAILED  \]" $OUT/seeds_*.log | grep -v ":0" | head
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
