B=build-cuda/dev; M=/tmp/tq-qwen35-9b-mlx4; export LD_LIBRARY_PATH=$PWD/$B/lib
OUT=$OUT/v12 GEN=32 bash scripts/cuda-device-run.sh $B all 2>&1 | tail -40
for kv in fp16 tq3; do for t in "--temp 0" ""; do echo "== generate --kv $kv $t"; $B/tq generate -m $M --device cuda --kv $kv -p "Hello there" -n 128 $t 2>&1 | tail -2; done; done > $OUT/v12/generate.log 2>&1
cat $OUT/v12/generate.log | grep -v "^$" | tail -12
