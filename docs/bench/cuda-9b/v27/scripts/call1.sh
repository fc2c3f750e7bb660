#!/bin/bash
# session 22 call 1: ncu of one decode step's attention + merge kernels (8 layers) at depth ~30 and 4K, fp16 vs tq3
B=build-cuda/dev
for v in final; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
( time $B/final/tq make-model --preset 9b --dtype mlx4 --out $M ) > $OUT/make_model.log 2>&1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for kv in tq3 fp16; do for d in 0 4096; do
  extra="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
  [ $kv = tq3 ] && extra="--set full --section SourceCounters"
  timeout 200 $NCU --kernel-name regex:'attention_tc_kernel|attention_merge_kernel' --launch-skip 480 --launch-count 16 \
    $extra -o $OUT/rep_${kv}_$d $B/final/tq bench-depth -m $M --device cuda --kv $kv --depths $d --gen 40 \
    --prefill 16 > $OUT/ncu_run_${kv}_$d.log 2>&1
  $NCU --import $OUT/rep_${kv}_$d.ncu-rep --page details > $OUT/ncu_${kv}_$d.txt 2>&1
  $NCU --import $OUT/rep_${kv}_$d.ncu-rep --page raw --csv --metrics gpu__time_duration.sum,launch__grid_size,smsp__warps_launched.sum > $OUT/dur_${kv}_$d.csv 2>&1
  if [ $kv = tq3 ]; then
    $NCU --import $OUT/rep_${kv}_$d.ncu-rep --page source --csv --print-source sass > $OUT/src_${kv}_$d.csv 2>&1
    xz -6 $OUT/src_${kv}_$d.csv
  fi
  rm -f $OUT/rep_${kv}_$d.ncu-rep
done; done
for f in $OUT/dur_*.csv; do echo "== $f"; cut -c1-400 $f | tail -17; done
grep -E "Duration|Registers Per|Achieved Occupancy" $OUT/ncu_tq3_0.txt | head -8
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
