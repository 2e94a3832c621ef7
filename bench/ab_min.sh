#!/bin/bash
# A/B of two Google Benchmark binaries on a noisy machine: runs them alternately N times
# with a benchmark filter and prints, per benchmark and binary, the minimum wall-clock
# time (the Time column) in µs (A = the first binary, B = the second). The minimum of
# alternating runs is robust to other tenants' load, which only ever adds time.
#   usage: bench/ab_min.sh N FILTER BINARY_A BINARY_B [extra benchmark flags...]
#   e.g.:  bench/ab_min.sh 5 'BM_ntk_update/.*/256$' /tmp/bench_model_before build/bench/bench/bench_model
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
n=$1 filter=$2 a=$3 b=$4
shift 4
for _ in $(seq "$n"); do
  for side in A B; do
    if [ "$side" = A ]; then bin=$a; else bin=$b; fi
    "$bin" --benchmark_min_time=0.1 --benchmark_filter="$filter" "$@" 2>/dev/null |
      awk -v side="$side" '/^BM_/ {
        v = $2; if ($3 == "ns") v /= 1000; else if ($3 == "ms") v *= 1000; else if ($3 == "s") v *= 1e6
        print side, $1, v }'
  done
done | awk '{ k = $2 " " $1; if (!(k in m) || $3 < m[k]) m[k] = $3 }
            END { for (k in m) { split(k, p, " "); printf "%s %s %.4g\n", p[2], p[1], m[k] } }' |
  sort -k2,2 -k1,1
