-- Tamper evidence: the seal chain over apigee.ingest_batches and the record
-- of what retention dropped.
--
-- apigee.audit_seals holds seal(n) = SHA-256(seal(n−1) ‖ batch n) for every
-- committed batch, in batch-id order (the encoding is shared/audit's Seal).
-- functions/rollup appends to it after ingest has committed: a batch row
-- cannot be rewritten, and a batch cannot be deleted, without breaking the
-- chain, whose head the rollup logs every run (a copy outside the database).
--
-- apigee.audit_retained lists the raw ranges retention dropped, written in
-- the same statement as the drop: verify does not count their rows missing.
-- Batch rows and seals are never dropped, so the chain stays whole from its
-- first batch.
--
-- Both are append-only like the raw tables: only the owner may change them,
-- and no one is granted UPDATE, DELETE or TRUNCATE.

-- +goose Up
CREATE TABLE apigee.audit_seals (
    batch_id      bigint      PRIMARY KEY,
    -- The batch this one links to; NULL for the first.
    prev_batch_id bigint      UNIQUE,
    seal          bytea       NOT NULL CHECK (octet_length(seal) = 32),
    sealed_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (prev_batch_id < batch_id)
);
ALTER TABLE apigee.audit_seals OWNER TO apigee_owner;

CREATE TABLE apigee.audit_retained (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation    text        NOT NULL,
    range_from  timestamptz NOT NULL,
    range_to    timestamptz NOT NULL,
    dropped_at  timestamptz NOT NULL DEFAULT now(),
    -- The chain's head when the range was dropped.
    head_batch_id bigint,
    head_seal     bytea,
    CHECK (range_from < range_to)
);
ALTER TABLE apigee.audit_retained OWNER TO apigee_owner;

CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON apigee.audit_seals
    FOR EACH ROW EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON apigee.audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER audit_retained_append_only BEFORE UPDATE OR DELETE ON apigee.audit_retained
    FOR EACH ROW EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER audit_retained_no_truncate BEFORE TRUNCATE ON apigee.audit_retained
    FOR EACH STATEMENT EXECUTE FUNCTION apigee.forbid_change();

REVOKE ALL ON apigee.audit_seals, apigee.audit_retained FROM PUBLIC;
-- Rollup seals and records retention; reading the sequence tells it which
-- batch ids have been handed out (see functions/rollup/seal.go).
GRANT SELECT, INSERT ON apigee.audit_seals, apigee.audit_retained TO apigee_rollup;
GRANT SELECT ON SEQUENCE apigee.ingest_batch_id_seq TO apigee_rollup;

-- Sealing's horizon (functions/rollup/seal.go) holds only while no session
-- reserves ids ahead: keep the default cache of one.
ALTER SEQUENCE apigee.ingest_batch_id_seq CACHE 1;

-- Where the rollup's budgeted verify continues from (0: the start).
ALTER TABLE apigee.rollup_state ADD COLUMN verified_through bigint NOT NULL DEFAULT 0;
GRANT UPDATE (verified_through) ON apigee.rollup_state TO apigee_rollup;

-- +goose Down
ALTER TABLE apigee.rollup_state DROP COLUMN IF EXISTS verified_through;
DROP TABLE IF EXISTS apigee.audit_retained;
DROP TABLE IF EXISTS apigee.audit_seals;
