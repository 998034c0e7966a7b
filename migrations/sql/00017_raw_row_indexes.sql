-- Leaner raw rows: apigee.api_calls keeps two indexes instead of five.
--
-- Each index that stays has a query that needs it:
--   api_calls_key (received_at, apigee.call_key(message_id)), UNIQUE —
--     ingest's exactly-once INSERT … ON CONFLICT DO NOTHING
--     (functions/ingest/write.go), and every time-range read: the rollup's
--     minute recompute (WHERE received_at >= $1 AND received_at < $2),
--     readers' ad hoc queries over a window. received_at comes first, so it
--     also replaces api_calls_received_at_idx.
--   api_calls_batch_idx (batch_id) — the verifier reads a batch's rows by
--     batch_id (shared/audit/verify.go, one query per batch); btree
--     deduplication stores it at about 10 bytes a row. A BRIN index would
--     be smaller, but a BRIN range is only summarised by (auto)vacuum, and
--     until then every lookup reads the whole unsummarised tail of each
--     chunk: verifying just-written batches would be quadratic.
-- Dropped, with no query that needs them: the primary key
-- (message_id, received_at) (replaced by api_calls_key),
-- api_calls_received_at_idx, api_calls_apiproxy_idx and
-- api_calls_tenant_idx: dashboards, anomalies and the README's queries read
-- the rollups; retention drops whole chunks or partitions; the rollup reads
-- by time. A deployment that queries raw rows per proxy or per tenant
-- without a time window can add its own index (65–75 bytes a row each).
--
-- The dedupe key. api_calls_key holds a 64-bit hash of message_id, not the
-- text: 24 bytes an entry whatever the id's length, against 40–60 for
-- (message_id, received_at), and the table's time order instead of random
-- inserts across the index. It still includes received_at, as TimescaleDB
-- and PostgreSQL require of a unique index on a table partitioned by it,
-- so a redelivered call (same message_id, same received_at) conflicts in
-- the one chunk or partition its received_at picks, as the primary key did.
--
-- Collisions. Two different message_ids conflict only if they have the same
-- received_at (to the microsecond) and the same 64-bit hash. Among m calls
-- sharing one received_at the chance is about m²/2⁶⁵; summed over every
-- instant, N calls stored with at most m per instant give at most
-- N·m/2⁶⁵ — for 10¹² calls with 100 per millisecond, under 3·10⁻⁶ over the
-- installation's life. And a collision is not a silent loss: when
-- ON CONFLICT skips a row, ingest checks that a stored row with that very
-- message_id and received_at exists, and otherwise fails the batch as a
-- data error, so the delivery's records are quarantined
-- (apigee.ingest_rejects, reason db_rejected) instead of dropped. The hash
-- is hashtextextended, PostgreSQL's own (hash partitioning and hash indexes
-- rely on it staying the same across versions); it is not cryptographic,
-- which costs nothing here: whoever could publish a record crafted to
-- collide with a future call could as well publish that call's own
-- message_id and received_at first, which the old key let through as well.
--
-- In place: the unique index is built over existing rows (a collision
-- among them, if any, fails the migration with a unique violation naming
-- the key, and nothing changes), then the old ones go. The table is
-- locked against writes while the index builds: run it in a quiet minute,
-- or expect ingest to wait (its deliveries are retried by Pub/Sub).
-- Stored rows, rows_sha256 and the seal chain are untouched (no column
-- changes), so make verify works on rows written before and after.

-- +goose Up
-- A SQL function the planner inlines: index and queries see
-- hashtextextended itself, so a lookup by key can use api_calls_key.
CREATE FUNCTION apigee.call_key(message_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT pg_catalog.hashtextextended(message_id, 0)';
ALTER FUNCTION apigee.call_key(text) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.call_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.call_key(text) TO apigee_ingest, apigee_rollup, apigee_reader;

CREATE UNIQUE INDEX api_calls_key ON apigee.api_calls (received_at, apigee.call_key(message_id));
ALTER TABLE apigee.api_calls DROP CONSTRAINT api_calls_pkey;
DROP INDEX apigee.api_calls_received_at_idx;
DROP INDEX apigee.api_calls_apiproxy_idx;
DROP INDEX apigee.api_calls_tenant_idx;

-- +goose Down
CREATE INDEX api_calls_tenant_idx ON apigee.api_calls (tenant, received_at DESC);
CREATE INDEX api_calls_apiproxy_idx ON apigee.api_calls (apiproxy, received_at DESC);
CREATE INDEX api_calls_received_at_idx ON apigee.api_calls (received_at DESC);
ALTER TABLE apigee.api_calls ADD PRIMARY KEY (message_id, received_at);
DROP INDEX apigee.api_calls_key;
DROP FUNCTION apigee.call_key(text);
