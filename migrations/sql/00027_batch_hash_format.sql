-- A push batch in one round trip (issue 13): rows_sha256 format 2.
--
-- Format 1 (00002) starts the hash with the batch id and writes the id in
-- every row, so ingest has to learn the id from nextval before it can hash
-- the rows and send the batch row: two round trips and five statements
-- (BEGIN, nextval, the INSERT, the batch row, COMMIT) per transaction,
-- each with its fixed cost to the backend, for push batches of a few dozen
-- rows (README, "What session 9 changed", has the measurements). Format 2
-- lets the database bind the id itself:
--
--   rows_sha256 = SHA-256(batch_id as 8 big-endian bytes ‖ D)
--   D = SHA-256 of the rows in format 1's row encoding, batch_id written
--       as 0 and no id in front (shared/audit: NewDigest, BindID)
--
-- Ingest sends D, and the statement computes sha256(int8send(id) || D),
-- so a push batch is one statement in one round trip: its id, rows,
-- invalidations and batch row, autocommitted. The id still comes from
-- nextval inside the transaction, which the
-- seal horizon relies on (functions/rollup/seal.go). Rows and seals are
-- unchanged; a batch row says its format in rows_sha256_format, and every
-- row written before this migration is format 1. Ingest keeps format 1
-- where it has the id first anyway: the staging-table path, batches with
-- rejects, and the retry below.
--
-- expect_all_stored aborts a one-round-trip batch in which ON CONFLICT
-- skipped a call (a redelivered message): that batch row would count and
-- hash a call the batch did not store. SQLSTATE AT001 means that alone;
-- ingest rolls back and writes the batch again in two round trips.

-- +goose Up
-- The default fills existing rows without rewriting the table; NOT VALID
-- skips a scan of every batch row under the ALTER's lock (each one holds
-- the default, 1), and new rows are checked all the same.
ALTER TABLE apigee.ingest_batches ADD COLUMN rows_sha256_format smallint NOT NULL DEFAULT 1;
ALTER TABLE apigee.ingest_batches ADD CONSTRAINT ingest_batches_rows_sha256_format_check
    CHECK (rows_sha256_format IN (1, 2)) NOT VALID;

-- +goose StatementBegin
-- No SET search_path: it runs with its caller's rights (not SECURITY
-- DEFINER) and names no object, and the clause would cost every batch a
-- configuration save and restore.
CREATE FUNCTION apigee.expect_all_stored(stored bigint, sent bigint) RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    IF stored IS DISTINCT FROM sent THEN
        RAISE EXCEPTION 'ingest: % of the batch''s % calls are new, the others are stored already', stored, sent
            USING ERRCODE = 'AT001';
    END IF;
    RETURN stored;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.expect_all_stored(bigint, bigint) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.expect_all_stored(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.expect_all_stored(bigint, bigint) TO apigee_ingest;

-- +goose Down
-- Without the column a format-2 batch would be checked as format 1 and
-- reported as changed: refuse while there are any.
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM apigee.ingest_batches WHERE rows_sha256_format = 2) THEN
        RAISE EXCEPTION 'apigee.ingest_batches holds format-2 batch rows (rows_sha256_format = 2), which only this migration''s verifier reads';
    END IF;
END
$$;
-- +goose StatementEnd
DROP FUNCTION apigee.expect_all_stored(bigint, bigint);
ALTER TABLE apigee.ingest_batches DROP COLUMN rows_sha256_format;
