# Tamper evidence (shared/audit, functions/rollup/cmd/verify).
.PHONY: verify

# verify recomputes every batch's rows_sha256 and the seal chain of the
# database at DATABASE_URL (the owner, or a login in apigee_rollup). The
# command exits 0 when intact, 1 when tampered (it prints the first bad
# batch and how), 2 when it could not check; make itself then fails with
# its own status 2. VERIFY_ARGS="-head BATCH:SEAL" also requires a chain
# head copied from the rollup's log.
VERIFY_ARGS ?=
verify:
	@test -n "$${DATABASE_URL:-}" || { echo "make verify: set DATABASE_URL"; exit 2; }
	@mkdir -p out && $(GO) build -o out/verify ./functions/rollup/cmd/verify
	@out/verify $(VERIFY_ARGS)
