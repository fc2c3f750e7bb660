#!/bin/bash
# session 21 call 1: CUDA tests of the final commit (172f9c6, CI's build), then where tq3's shallow gap goes:
# stages left out with TQ_CUDA_SKIP at depth 0 / 4K, fp16 and tq3
B=build-cuda/dev/final
for f in tq tq_tests; do xz -dc $B/$f.xz > $B/$f; chmod +x $B/$f; done
export LD_LIBRARY_PATH=$PWD/$B/lib:${LD_LIBRARY_PATH:-}
ldd $B/tq | grep "not found" | tee $OUT/ldd_missing.txt
OUT=$OUT/tests timeout 100 bash scripts/cuda-device-run.sh $B tests > /dev/null 2>&1
tail -4 $OUT/tests/cuda_tests.log
T=$B/tq
ROUNDS=2 KV=fp16,tq3 DEPTHS=0,4096 GEN=64 OUT=$OUT/ab timeout 230 bash scripts/cuda-ab.sh base=$T ctl=$T,TQ_CUDA_SKIP=none noatt=$T,TQ_CUDA_SKIP=attention \
  noapp=$T,TQ_CUDA_SKIP=kv_append noprep=$T,TQ_CUDA_SKIP=attn_prep | tee $OUT/ab.txt
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
