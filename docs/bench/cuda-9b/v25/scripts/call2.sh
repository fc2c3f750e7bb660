#!/bin/bash
# session 20 call 2: ncu of new3's direct kernel at 128K (source counters by opcode); greedy texts main vs new3
B=build-cuda/dev
for v in main new3; do xz -dc $B/$v/tq.xz > $B/$v/tq; chmod +x $B/$v/tq; done
export LD_LIBRARY_PATH=$PWD/$B/lib
M=/tmp/tq-qwen35-9b-mlx4
[ -f $M/config.json ] || $B/main/tq make-model --preset 9b --dtype mlx4 --out $M > /dev/null 2>&1
for v in main new3; do for kv in tq3 tq3+w0; do
  $B/$v/tq generate -m $M --device cuda --kv $kv -p 'The quick brown fox' -n 40 --temp 0 2>/dev/null > $OUT/text_${v}_$kv.txt
done; done
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for v in new3; do
  timeout 400 $NCU --kernel-name regex:attention_tc_kernel --launch-skip 64 --launch-count 1 --set full \
    --section SourceCounters -o $OUT/rep_$v $B/$v/tq bench-depth -m $M --device cuda --kv tq3 --depths 131072 --gen 16 \
    --prefill 16 > $OUT/ncu_run_$v.log 2>&1
  $NCU --import $OUT/rep_$v.ncu-rep --page details > $OUT/ncu_$v.txt 2>&1
  $NCU --import $OUT/rep_$v.ncu-rep --page source --csv --print-source sass > $OUT/src_$v.csv 2>&1
  python3 - $OUT/src_$v.csv > $OUT/opcode_mix_$v.txt <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
for i, r in enumerate(rows):
    if 'Source' in r and any('Instructions Executed' in c for c in r): hdr = i; break
h = rows[hdr]; src = h.index('Source'); ie = [j for j, c in enumerate(h) if c.startswith('Instructions Executed')][0]
ss = [j for j, c in enumerate(h) if c.startswith('Warp Stall Sampling (All')]
c = collections.Counter(); s = collections.Counter(); tot = 0
for r in rows[hdr + 1:]:
    if len(r) <= ie: continue
    t = r[src].strip().split()
    if not t: continue
    op = t[1] if t[0].startswith('@') and len(t) > 1 else t[0]
    op = op.split('.')[0]
    try: n = float(r[ie].replace(',', ''))
    except: continue
    c[op] += n; tot += n
    if ss:
        try: s[op] += float(r[ss[0]].replace(',', ''))
        except: pass
print('total inst', tot, 'per chunk-warp', tot / 32768)
for op, n in c.most_common(40): print(f'{op:10s} {n:12.0f} {100*n/tot:5.1f}%  per chunk-warp {n/32768:7.1f}  stall {s[op]:.0f}')
PY
  gzip -9 $OUT/src_$v.csv
  rm -f $OUT/rep_$v.ncu-rep
done
grep -E "Duration|Executed Ipc A|Issue Slots Busy|ALU|FMA|Registers Per|Achieved Occupancy|Theoretical Occ" $OUT/ncu_new3.txt | head -20
head -25 $OUT/opcode_mix_new3.txt
cd $OUT && tar czf ../all.tgz . && rm -rf ./* && mv ../all.tgz .
