# Benchmarks: each prints a table of ratios measured side by side in one run
# (absolute numbers drift on a shared machine; compare the ratios). `make
# bench` runs them all and ends with one summary table against the targets.
.PHONY: bench bench-ingest bench-rollup

BENCH_OUT ?= $(CURDIR)/out/bench

bench:
	@set -euo pipefail; mkdir -p $(BENCH_OUT); \
	$(MAKE) --no-print-directory bench-ingest | tee $(BENCH_OUT)/ingest.txt; \
	$(MAKE) --no-print-directory bench-rollup | tee $(BENCH_OUT)/rollup.txt; \
	deploy/local/bench-summary.sh $(BENCH_OUT)/ingest.txt $(BENCH_OUT)/rollup.txt

# BENCH_DATABASE_URL defaults to the local TimescaleDB (started if needed).
bench-ingest:
	@deploy/local/setup.sh bench; \
	url="$${BENCH_DATABASE_URL:-$$(deploy/local/timescaledb.sh up | tail -n1)}"; \
	BENCH_DATABASE_URL="$$url" $(GO) run ./deploy/local/cmd/bench-ingest

# On TimescaleDB and plain PostgreSQL (TEST_TIMESCALEDB_URL and
# TEST_POSTGRES_URL, or the local servers, started if needed): full rebuild
# over 1,000,000 raw rows (30 days) vs incremental refresh after +1%,
# retention dropping 30 daily chunks; then 1,000,000 rows at 10,000 and
# 100,000 rows per minute: full refresh vs a plain GROUP BY, and every
# Grafana panel from rollups vs raw rows; ends with a table of ratios vs
# targets.
bench-rollup:
	@set -euo pipefail; BENCH_DATABASE_URL="$${TEST_TIMESCALEDB_URL:-}" deploy/local/setup.sh bench; \
	url="$${TEST_TIMESCALEDB_URL:-$$(deploy/local/timescaledb.sh up | tail -n1)}"; \
	pg="$${TEST_POSTGRES_URL:-$$(deploy/local/postgres.sh up | tail -n1)}"; \
	TEST_TIMESCALEDB_URL="$$url" TEST_POSTGRES_URL="$$pg" $(GO) test -run '^$$' -bench BenchmarkRollup -benchtime 1x -timeout 120m ./functions/rollup/

# bench-record counts the record decoder's instructions per record with
# callgrind (repeatable on a busy machine, unlike ns/op): the difference
# between two iteration counts, so start-up cost cancels. Go's preemption
# signals crash callgrind, hence asyncpreemptoff.
.PHONY: bench-record
bench-record:
	@set -euo pipefail; command -v valgrind >/dev/null || { echo "bench-record: valgrind is not installed (apt-get install valgrind)"; exit 1; }; \
	bin=$$(mktemp -d)/record.test; $(GO) test -c -o $$bin ./shared/record/; cd shared/record; \
	for spec in 1-record:6000:10000:4000 500-record:20:60:20000; do \
		IFS=: read -r name lo hi per <<<"$$spec"; n=(); \
		for it in $$lo $$hi; do \
			n+=($$(GODEBUG=asyncpreemptoff=1 GOMAXPROCS=1 GOGC=off valgrind --tool=callgrind --callgrind-out-file=/dev/null \
				$$bin -test.run '^$$' -test.bench "Parse/$$name" -test.benchtime=$${it}x 2>&1 >/dev/null | \
				sed -n 's/.*Collected : \([0-9]*\).*/\1/p')); \
		done; \
		echo "Parse/$$name: $$(( (n[1] - n[0]) / per )) instructions per record"; \
	done
