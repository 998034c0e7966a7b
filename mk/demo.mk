# The local demo and the reliability suite (deploy/local/cmd/demo, deploy/local/reliability).
.PHONY: demo reliability reliability-db-down

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

# reliability runs the reliability suite against a private TimescaleDB
# cluster (it restarts and locks the database, so never the shared test
# servers): port 55442, data in /var/lib/apigee/reliability inside the
# local root. About two minutes on 2 cores; CI=true makes a missing
# database a failure instead of a skip.
RELIABILITY_TSDB_PORT ?= 55442
RELIABILITY_TSDB_DATA ?= /var/lib/apigee/reliability
reliability:
	@set -euo pipefail; \
	url=$$(TSDB_PORT=$(RELIABILITY_TSDB_PORT) TSDB_DATA=$(RELIABILITY_TSDB_DATA) deploy/local/timescaledb.sh up | tail -n1); \
	$(GO) vet -tags reliability ./deploy/local/reliability/; \
	RELIABILITY_TIMESCALEDB_URL="$$url" RELIABILITY_TSDB_DATA="$(RELIABILITY_TSDB_DATA)" \
		$(GO) test -tags reliability -count=1 -timeout 10m -v ./deploy/local/reliability/ 2>&1 | \
		grep -vE '^=== (RUN|PAUSE|CONT|NAME)'

reliability-db-down:
	-TSDB_PORT=$(RELIABILITY_TSDB_PORT) TSDB_DATA=$(RELIABILITY_TSDB_DATA) deploy/local/timescaledb.sh down
