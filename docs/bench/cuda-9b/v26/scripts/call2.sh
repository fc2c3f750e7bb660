#!/bin/bash
# session 21 call 2: CUDA tests of the final commit (172f9c6, CI's build) with the test data path fixed
B=build-cuda/dev/final
for f in tq tq_tests; do xz -dc $B/$f.xz > $B/$f; chmod +x $B/$f; done
OUT=$OUT/tests timeout 120 bash scripts/cuda-device-run.sh $B tests > /dev/null 2>&1
grep -E "^\[ +(OK|FAILED|PASSED) |tests from .* ran" $OUT/tests/cuda_tests.log | tail -25
