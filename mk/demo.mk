# The local demo and the reliability suite (deploy/local/cmd/demo, deploy/local/reliability).
.PHONY: demo reliability soak reliability-run reliability-db-down

# demo runs the whole pipeline on this machine in about a minute and writes
# demo-report.html. It starts the local TimescaleDB (as root) unless
# DATABASE_URL names a database to use instead (an admin URL: the demo
# migrates it and creates logins). Flags: DEMO_ARGS="-rate 800 -duration 45s".
DEMO_ARGS ?=
demo:
	@set -euo pipefail; \
	deploy/local/setup.sh demo; \
	if [ -z "$${DATABASE_URL:-}" ]; then deploy/local/timescaledb.sh up >/dev/null; fi; \
	$(GO) run ./deploy/local/cmd/demo $(DEMO_ARGS)

# reliability runs the reliability suite against two private clusters (it
# restarts them, fills their connection slots and locks tables, so never
# the shared test servers): TimescaleDB on port 55442 with its data in
# /var/lib/apigee/reliability inside the debootstrap root, and the host's
# PostgreSQL on port 55443 with its data in
# /var/lib/apigee-timescale/reliability-pg. Every test runs on both, about
# five minutes on 2 cores; CI=true makes a missing database a failure
# instead of a skip.
RELIABILITY_TSDB_PORT ?= 55442
RELIABILITY_TSDB_DATA ?= /var/lib/apigee/reliability
RELIABILITY_PG_PORT   ?= 55443
RELIABILITY_PG_DATA   ?= /var/lib/apigee-timescale/reliability-pg
RELIABILITY_ARGS      ?=
reliability:
	@$(MAKE) --no-print-directory reliability-run RELIABILITY_TAGS=reliability \
		RELIABILITY_ARGS="-timeout 20m $(RELIABILITY_ARGS)"

# soak pushes steady traffic through the whole ingest path for
# SOAK_DURATION (default 30m) on both private clusters at once, printing
# every minute ingest's RSS, goroutines and open connections, the p99
# answer time and the rows stored, then a line saying whether each stayed
# flat. Not part of `make test`. SOAK_RATE sets the records per second per
# database (default 200).
SOAK_DURATION ?= 30m
SOAK_RATE     ?= 200
soak:
	@$(MAKE) --no-print-directory reliability-run RELIABILITY_TAGS=reliability,soak \
		RELIABILITY_ARGS="-run TestSoak -timeout 0 $(RELIABILITY_ARGS)" \
		RELIABILITY_ENV="SOAK_DURATION=$(SOAK_DURATION) SOAK_RATE=$(SOAK_RATE)"

RELIABILITY_ENV ?=
reliability-run:
	@set -euo pipefail; \
	ts=$$(TSDB_PORT=$(RELIABILITY_TSDB_PORT) TSDB_DATA=$(RELIABILITY_TSDB_DATA) deploy/local/timescaledb.sh up | tail -n1); \
	pg=$$(PG_PORT=$(RELIABILITY_PG_PORT) PG_DATA_DIR=$(RELIABILITY_PG_DATA) deploy/local/postgres.sh up | tail -n1); \
	$(GO) vet -tags "$(RELIABILITY_TAGS)" ./deploy/local/reliability/; \
	env $(RELIABILITY_ENV) \
		RELIABILITY_TIMESCALEDB_URL="$$ts" RELIABILITY_TSDB_DATA="$(RELIABILITY_TSDB_DATA)" \
		RELIABILITY_POSTGRES_URL="$$pg" RELIABILITY_PG_DATA="$(RELIABILITY_PG_DATA)" \
		$(GO) test -tags "$(RELIABILITY_TAGS)" -count=1 -v $(RELIABILITY_ARGS) ./deploy/local/reliability/ 2>&1 | \
		grep --line-buffered -vE '^=== (RUN|PAUSE|CONT|NAME)'

reliability-db-down:
	-TSDB_PORT=$(RELIABILITY_TSDB_PORT) TSDB_DATA=$(RELIABILITY_TSDB_DATA) deploy/local/timescaledb.sh down
	-PG_PORT=$(RELIABILITY_PG_PORT) PG_DATA_DIR=$(RELIABILITY_PG_DATA) deploy/local/postgres.sh down
