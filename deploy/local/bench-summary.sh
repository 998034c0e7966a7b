#!/usr/bin/env bash
# bench-summary.sh INGEST_OUTPUT ROLLUP_OUTPUT: one table of every
# benchmark's ratios against its target, from the outputs of
# `make bench-ingest` and `make bench-rollup`.
set -euo pipefail
ingest=$1 rollup=$2

# row LABEL: the markdown row of the ingest table whose mode starts with LABEL.
row() { grep -F "| $1 " "$ingest" | head -n1; }
col() { awk -F'|' -v c="$2" '{gsub(/^ +| +$/, "", $c); print $c}' <<<"$1"; }
# metric NAME KIND: a b.ReportMetric value from the rollup benchmark line of KIND.
metric() { grep -E "^BenchmarkRollup/$2" "$rollup" | tr -s ' \t' '\n' | grep -B1 -x "$1" | head -n1; }

r2=$(row "(2)") r3=$(row "(3)") r0b=$(row "(0b)")
echo
echo "| benchmark | measured | target |"
echo "|---|---|---|"
echo "| ingest core vs COPY+ON CONFLICT (2)/(1b) | $(col "$r2" 8) | ≥ 0.9 × |"
echo "| HTTP push vs naive (3)/(4a), (3)/(4b) | $(col "$r3" 8), p99 $(col "$r3" 6) | ≥ 10 × (4a), p99 ≤ 100 ms |"
[ -z "$r0b" ] || echo "| ceiling for (3): ingest with no database (0b) | $(col "$r0b" 8) | (not a target) |"
for kind in timescaledb postgres; do
	incr=$(metric incr/full_% "$kind" || true)
	[ -n "$incr" ] || continue
	echo "| rollup incremental +1% / full rebuild ($kind) | ${incr} % | ≤ 5 % |"
	echo "| retention, 30 daily chunks: 1M rows / 3,333 rows ($kind) | $(metric retention30_s "$kind") s / $(metric retention30_small_s "$kind") s | < 2 s, independent of rows |"
done
