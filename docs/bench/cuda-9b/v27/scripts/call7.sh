#!/bin/bash
# session 22 call 7: CI's own Release build of the final commit (CUDA architectures 80 and 90): the CUDA tests
B=build-cuda/dev
for f in tq tq_tests; do xz -dc $B/ci/$f.xz > $B/ci/$f; chmod +x $B/ci/$f; done
OUT=$OUT/tests scripts/cuda-device-run.sh $B/ci tests 2>&1 | tail -3
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
