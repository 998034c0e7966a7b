# Tamper evidence (shared/audit, functions/rollup/cmd/verify).
.PHONY: verify

# verify recomputes every batch's rows_sha256 and the seal chain of the
# database at DATABASE_URL (the owner, or a login in apigee_rollup). Exit 0:
# intact; 1: tampered (the first bad batch and how); 2: could not check.
# VERIFY_ARGS="-head BATCH:SEAL" also requires a head from the rollup's log.
VERIFY_ARGS ?=
verify:
	@test -n "$${DATABASE_URL:-}" || { echo "make verify: set DATABASE_URL"; exit 2; }
	@$(GO) run ./functions/rollup/cmd/verify $(VERIFY_ARGS)
