#!/bin/bash
# session 23 call 13: CI's own Release build of dbbfc57 (CUDA architectures 80 and 90; the final code): the CUDA tests
B=build-cuda/dev
for f in tq tq_tests; do xz -dc $B/ci/$f.xz > $B/ci/$f; chmod +x $B/ci/$f; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/ci tests 2>&1 | tail -3
grep -E '\[cuda attention\] (tq|k8)' $OUT/tests/cuda_tests.log
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
