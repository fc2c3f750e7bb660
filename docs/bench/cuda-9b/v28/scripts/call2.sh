#!/bin/bash
# session 23 call 2: what the fp16 window costs tq3 today (CI's build of 95a23d9): fp16, tq3, tq3+w0 side by side,
# 3 interleaved rounds (one binary: cuda-ab.sh's variants are the same tq; the policies are bench-depth's --kv list)
B=build-cuda/dev
for f in tq; do xz -dc $B/ci/$f.xz > $B/ci/$f; chmod +x $B/ci/$f; done
ROUNDS=3 KV=fp16,tq3,tq3+w0 DEPTHS=0,4096,16384,131072 GEN=64 OUT=$OUT/ab scripts/cuda-ab.sh ci=$B/ci/tq 2>&1 | tee $OUT/ab.txt | tail -30
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
