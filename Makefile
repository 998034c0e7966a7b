# apigee-timescale: the commands a user runs. `make help` lists them.
SHELL := /bin/bash
GO    ?= go

# Database tests use these superuser URLs; when unset, `make test` starts the
# local servers (deploy/local/*.sh, as root) and points them there.
TEST_TIMESCALEDB_URL ?=
TEST_POSTGRES_URL    ?=

.PHONY: help test db-up db-down vet unit fuzz bench bench-ingest bench-rollup lint-apigee

help:
	@echo "make test          start local TimescaleDB + PostgreSQL if needed, vet, run every test (the CI command)"
	@echo "make db-up         start the local databases (idempotent)"
	@echo "make db-down       stop them"
	@echo "make demo          the whole system on this machine in about a minute (demo-report.html)"
	@echo "make reliability   the reliability suite on private TimescaleDB (:55442) and PostgreSQL (:55443) clusters"
	@echo "make soak          steady push traffic for SOAK_DURATION (30m), flatness of RSS, goroutines, connections, p99"
	@echo "make verify        check the tamper evidence (rows hashes + seal chain) of DATABASE_URL"
	@echo "make bench         run the benchmarks and print ratios (bench-ingest, bench-rollup; bench-record: decoder instructions per record)"
	@echo "make deploy        deploy to Google Cloud (deploy/gcp/README.md); deploy-dry-run prints it"
	@echo "make shellcheck    lint every shell script"
	@echo "make lint-apigee   lint the Apigee shared flows with apigeelint (Apigee X profile; also part of make test)"

db-up:
	@deploy/local/timescaledb.sh up >/dev/null
	@deploy/local/postgres.sh up >/dev/null

db-down:
	-deploy/local/timescaledb.sh down
	-deploy/local/postgres.sh down

# vet: gofmt, go vet and staticcheck (pinned in go.mod's tool directive, so
# the version is the same on every machine).
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# lint-apigee: apigeelint --profile apigeex on both shared flows, zero errors
# (deploy/apigee/apigeelint_test.go; `make test` runs it with every test).
lint-apigee:
	$(GO) test -count=1 -run '^TestApigeelint$$' -v ./deploy/apigee/

# test is the command README.md and .ci/run use.
test:
	@set -euo pipefail; \
	TEST_TIMESCALEDB_URL="$(TEST_TIMESCALEDB_URL)" TEST_POSTGRES_URL="$(TEST_POSTGRES_URL)" deploy/local/setup.sh test; \
	ts="$(TEST_TIMESCALEDB_URL)"; pg="$(TEST_POSTGRES_URL)"; \
	if [ -z "$$ts" ]; then ts=$$(deploy/local/timescaledb.sh up | tail -n1); fi; \
	if [ -z "$$pg" ]; then pg=$$(deploy/local/postgres.sh up | tail -n1); fi; \
	$(MAKE) --no-print-directory vet; \
	TEST_TIMESCALEDB_URL="$$ts" TEST_POSTGRES_URL="$$pg" $(GO) test -count=1 -timeout 20m ./...; \
	$(MAKE) --no-print-directory fuzz; \
	if [ "$$(id -u)" -eq 0 ]; then $(MAKE) --no-print-directory reliability; \
	else echo "reliability suite skipped: it needs root to run its private TimescaleDB cluster"; \
		if [ "$${CI:-}" = true ]; then exit 1; fi; fi

# A short fuzzing run of every fuzz target: a count of executions, not a
# duration, because Go 1.26's fuzzing coordinator can fail a target that
# found nothing with "context deadline exceeded" when a -fuzztime duration
# ends while a worker is busy (https://go.dev/issue/75804, fixed in Go
# 1.27; it failed this suite once on a loaded machine). Longer runs:
# FUZZTIME=1000000x (or a duration such as 10m, with that risk).
FUZZTIME ?= 20000x
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# Targets owned by parts of the project (demo, deploy, benchmarks) live in mk/.
-include mk/*.mk
