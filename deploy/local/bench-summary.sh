#!/usr/bin/env bash
# bench-summary.sh INGEST_OUTPUT ROLLUP_OUTPUT: one table of every
# benchmark's ratios against its target, from the outputs of
# `make bench-ingest` and `make bench-rollup`.
#
# It reads, and tolerates the absence of:
#   ingest  the rows of bench-ingest's ratio table, "| ingest: … |"
#   rollup  rows "| rollup: … |" that the rollup benchmark prints, as they
#           are; and the b.ReportMetric values incr/full_%, retention30_s
#           and retention30_small_s of BenchmarkRollup/<database> lines
set -euo pipefail
ingest=$1 rollup=$2

# metric NAME KIND: a b.ReportMetric value from the rollup benchmark line of KIND.
metric() { grep -E "^BenchmarkRollup/$2" "$rollup" 2>/dev/null | tr -s ' \t' '\n' | grep -B1 -x "$1" | head -n1 || true; }

echo
echo "| benchmark | measured | target | met |"
echo "|---|---:|---|---|"
grep -E '^\| ingest: ' "$ingest" 2>/dev/null || echo "| ingest: no ratio table in $ingest | – | – | **no** |"
grep -E '^\| rollup: ' "$rollup" 2>/dev/null || true
for kind in timescaledb postgres; do
	incr=$(metric incr/full_% "$kind")
	[ -n "$incr" ] || continue
	echo "| rollup: incremental +1% / full rebuild ($kind) | ${incr} % | ≤ 5 % | $(awk -v v="$incr" 'BEGIN { print (v <= 5) ? "yes" : "**no**" }') |"
	small=$(metric retention30_small_s "$kind") big=$(metric retention30_s "$kind")
	[ -z "$big" ] || echo "| rollup: retention, 30 daily chunks: 1M rows / 3,333 rows ($kind) | $big s / $small s | < 2 s, independent of rows | $(awk -v v="$big" 'BEGIN { print (v < 2) ? "yes" : "**no**" }') |"
done
