# Benchmarks: each prints a table of ratios measured side by side in one run.
.PHONY: bench bench-ingest

# BENCH_DATABASE_URL defaults to the local TimescaleDB (started if needed).
bench-ingest:
	@url="$${BENCH_DATABASE_URL:-$$(deploy/local/timescaledb.sh up | tail -n1)}"; \
	BENCH_DATABASE_URL="$$url" $(GO) run ./functions/ingest/cmd/bench
