#!/bin/bash
# The quality-control tuning grids of docs/results.md, on tuning seeds 100-104 (qg2l: 100-102).
# Usage: scripts/qc_tuning.sh [BIN] [OUT]   (defaults: target/release/assimd, qc-tuning/)
# Each line of OUT/*.txt is one seed: mean analysis RMSE, background-check rejections and screened
# observations of a clean run, and the same with --gross-errors 0.02 or --bias; blacklistings as
# [cycle, station].
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-target/release/assimd}
OUT=${2:-qc-tuning}
mkdir -p "$OUT"
file() { # base experiment file, then [qc] TOML lines -> a temporary experiment file
  local f="$OUT/$1.toml"; sed '/^\[expected\]/,$d' "$2" > "$f"; printf '\n%b\n' "$3" >> "$f"; echo "$f"
}
js() { python3 -c "import json,sys; d=json.load(sys.stdin); q=d['qc']; print(round(d['rmse_a'],4), q['station']['background_check'], q['station']['screened'], q['satellite']['background_check'], q['satellite']['screened'], d['blacklistings'])"; }
L96=configs/experiments/l96-full-letkf.toml
QG=configs/experiments/qg2l-stations+satellite-letkf.toml
# 1. background-check k, l96 full, 1000 cycles
for k in 3 4 5 6; do
  f=$(file l96-k$k $L96 "[qc.station]\nk = $k\n[qc.satellite]\nk = $k")
  for s in 100 101 102 103 104; do
    echo "k=$k seed=$s clean: $($B experiment --config $f --cycles 1000 --seed $s --json | js) | gross: $($B experiment --config $f --cycles 1000 --seed $s --gross-errors 0.02 --json | js)"
  done
done > "$OUT/l96-k.txt"
# 2. background-check k, qg2l stations+satellite, 300 cycles, burn-in 50
for k in 4 5; do
  f=$(file qg-k$k $QG "[qc.station]\nk = $k\n[qc.satellite]\nk = $k")
  for s in 100 101 102; do
    echo "k=$k seed=$s clean: $($B experiment --config $f --cycles 300 --burn-in 50 --seed $s --json | js) | gross: $($B experiment --config $f --cycles 300 --burn-in 50 --seed $s --gross-errors 0.02 --json | js)"
  done
done > "$OUT/qg2l-k.txt"
# 2b. background-check k on the sparse l96 stations+satellite, 5000 cycles, against QC off
SS=configs/experiments/l96-stations+satellite-letkf.toml
for k in 4 5; do
  f=$(file l96-ss-k$k $SS "[qc.station]\nk = $k\n[qc.satellite]\nk = $k")
  for s in 100 101 102 103 104; do
    echo "k=$k seed=$s qc on: $($B experiment --config $f --seed $s --json | js) | qc off: $($B experiment --config $f --seed $s --qc off --json | js)"
  done
done > "$OUT/l96-ss-k.txt"
# 3. station monitor: max_bias x min_reports, l96 full; clean 1000 cycles, and a +3 sigma drift of S04 from cycle 100
for mb in 1.0 1.5 2.0; do for mr in 10 20; do
  f=$(file l96-mb$mb-mr$mr $L96 "[qc.monitor]\nmax_bias = $mb\nmin_reports = $mr")
  for s in 100 101 102 103 104; do
    echo "max_bias=$mb min_reports=$mr seed=$s clean: $($B experiment --config $f --cycles 1000 --seed $s --json | js) | bias: $($B experiment --config $f --cycles 300 --seed $s --bias S04:3:100 --json | js)"
  done
done; done > "$OUT/l96-monitor.txt"
