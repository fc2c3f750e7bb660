#!/bin/bash
# session 22 call 4: the attention test with the mirror (the GPU cache restored into a CPU slot) and the encoder
# comparison: the whole CUDA suite with call 2's seed, the two failing seeds of call 3, then 12 fresh seeds
B=build-cuda/dev
xz -dc $B/t2/tq_tests.xz > $B/t2/tq_tests; chmod +x $B/t2/tq_tests
export LD_LIBRARY_PATH=$PWD/$B/lib
SRC=$(strings $B/t2/tq_tests | grep -m1 -oE '^/.*/tests/(data$|data/|test_[a-z0-9_]+\.cc$)' | sed -E 's#/tests/.*##')
[ -n "$SRC" ] && [ ! -e "$SRC" ] && mkdir -p "$(dirname "$SRC")" && ln -s "$PWD" "$SRC"
TQ_TEST_SEED=12193635723085305158 $B/t2/tq_tests --gtest_filter='Cuda*' > $OUT/suite_seed_12193635723085305158.log 2>&1
tail -3 $OUT/suite_seed_12193635723085305158.log
for s in 13084924943587674607 6673740774297052223; do
  TQ_TEST_SEED=$s $B/t2/tq_tests --gtest_filter='Cuda.AttentionMatchesCpuSlot' > $OUT/seed_$s.log 2>&1
done
for i in $(seq 1 12); do $B/t2/tq_tests --gtest_filter='Cuda.AttentionMatchesCpuSlot' > $OUT/fresh_$i.log 2>&1; done
grep -h "cuda attention\]" $OUT/*.log | sed -E 's/ +/ /g' | sort | awk '{print $3, $9, $19, $21, $25}' | sort -k1,1 -k3g | awk '{n[$1]++; c[$1]=$0} END{for (k in c) print n[k], c[k]}'
grep -h "Failure" -A3 $OUT/*.log | head -30
grep -c "PASSED  \]" $OUT/*.log
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
