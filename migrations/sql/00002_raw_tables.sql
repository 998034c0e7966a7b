-- The raw tables: api_calls (one row per API call), ingest_rejects (the
-- quarantine), ingest_batches (one row per committed ingest batch) and
-- rollup_invalidations (the minutes each batch touched, for functions/rollup).
--
-- Storage is chosen once, here: a TimescaleDB hypertable with 1-day chunks when
-- the extension can be loaded, otherwise declarative range partitioning by day
-- (Cloud SQL). The session setting apigee.storage ('timescaledb' or
-- 'partitioned') overrides the detection; the choice is kept in
-- apigee.settings('storage').

-- +goose Up
-- +goose StatementBegin
DO $mig$
DECLARE
    wanted text := coalesce(nullif(current_setting('apigee.storage', true), ''), 'auto');
    ts boolean;
    calls_cols text := $c$
        received_at          timestamptz NOT NULL,
        message_id           text        NOT NULL CHECK (octet_length(message_id) BETWEEN 1 AND 128),
        tenant               text        NOT NULL,
        organization         text        NOT NULL,
        environment          text        NOT NULL,
        apiproxy             text        NOT NULL,
        apiproxy_revision    integer     CHECK (apiproxy_revision >= 0),
        proxy_basepath       text,
        request_verb         text        NOT NULL,
        request_path         text        NOT NULL,
        response_status_code smallint    NOT NULL CHECK (response_status_code BETWEEN 0 AND 599),
        target_response_code smallint    CHECK (target_response_code BETWEEN 0 AND 599),
        total_response_time  integer     CHECK (total_response_time >= 0),
        target_response_time integer     CHECK (target_response_time >= 0),
        request_size         bigint      CHECK (request_size >= 0),
        response_size        bigint      CHECK (response_size >= 0),
        client_ip            inet,
        useragent            text,
        target_host          text,
        fault_name           text,
        is_error             boolean,
        developer_app        text,
        developer_email      text,
        api_product          text,
        client_id            text,
        identity_subject     text,
        identity_issuer      text,
        identity_email       text,
        identity_auth        text CHECK (identity_auth IN ('oauth2', 'jwt', 'apikey', 'none')),
        identity_scopes      text[],
        attributes           jsonb,
        extra                jsonb,
        pubsub_message_id    text,
        publish_time         timestamptz,
        ingested_at          timestamptz NOT NULL DEFAULT now(),
        batch_id             bigint      NOT NULL,
        PRIMARY KEY (message_id, received_at)
    $c$;
    -- received_at of a reject is the Pub/Sub publish time when known (stable
    -- across redeliveries, so a redelivered poison message is stored once),
    -- else the time ingest saw it.
    rejects_cols text := $c$
        received_at       timestamptz NOT NULL,
        dedupe_key        text        NOT NULL,
        tenant            text        NOT NULL,
        reason            text        NOT NULL,
        field             text,
        detail            text        NOT NULL,
        record_index      integer     NOT NULL,
        payload           bytea       NOT NULL,
        payload_sha256    bytea       NOT NULL,
        pubsub_message_id text,
        subscription      text,
        publish_time      timestamptz,
        attributes        jsonb,
        ingested_at       timestamptz NOT NULL DEFAULT now(),
        batch_id          bigint      NOT NULL,
        PRIMARY KEY (dedupe_key, received_at)
    $c$;
BEGIN
    IF wanted NOT IN ('auto', 'timescaledb', 'partitioned') THEN
        RAISE EXCEPTION 'apigee.storage must be timescaledb, partitioned or empty, not %', wanted;
    END IF;
    ts := CASE wanted
        WHEN 'timescaledb' THEN true
        WHEN 'partitioned' THEN false
        ELSE EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
            OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
                AND current_setting('shared_preload_libraries') LIKE '%timescaledb%')
    END;

    IF ts THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXECUTE 'CREATE TABLE apigee.api_calls (' || calls_cols || ')';
        EXECUTE 'CREATE TABLE apigee.ingest_rejects (' || rejects_cols || ')';
        PERFORM create_hypertable('apigee.api_calls', 'received_at',
            chunk_time_interval => INTERVAL '1 day', associated_schema_name => 'apigee_chunks');
        PERFORM create_hypertable('apigee.ingest_rejects', 'received_at',
            chunk_time_interval => INTERVAL '1 day', associated_schema_name => 'apigee_chunks');
    ELSE
        EXECUTE 'CREATE TABLE apigee.api_calls (' || calls_cols || ') PARTITION BY RANGE (received_at)';
        EXECUTE 'CREATE TABLE apigee.ingest_rejects (' || rejects_cols || ') PARTITION BY RANGE (received_at)';
    END IF;
    INSERT INTO apigee.settings (key, value) VALUES ('storage', CASE WHEN ts THEN 'timescaledb' ELSE 'partitioned' END);
END
$mig$;
-- +goose StatementEnd

ALTER TABLE apigee.api_calls OWNER TO apigee_owner;
ALTER TABLE apigee.ingest_rejects OWNER TO apigee_owner;

-- Time-range reads (rollup refreshes, dashboards). TimescaleDB made this
-- index with the hypertable; partitioned tables need it explicitly.
CREATE INDEX IF NOT EXISTS api_calls_received_at_idx ON apigee.api_calls (received_at DESC);
CREATE INDEX api_calls_apiproxy_idx ON apigee.api_calls (apiproxy, received_at DESC);
CREATE INDEX api_calls_tenant_idx ON apigee.api_calls (tenant, received_at DESC);
CREATE INDEX api_calls_batch_idx ON apigee.api_calls (batch_id);
CREATE INDEX ingest_rejects_reason_idx ON apigee.ingest_rejects (reason, received_at DESC);

CREATE TABLE apigee.ingest_batches (
    batch_id        bigint      PRIMARY KEY,
    committed_at    timestamptz NOT NULL DEFAULT now(),
    rows_inserted   integer     NOT NULL CHECK (rows_inserted >= 0),
    rows_duplicate  integer     NOT NULL CHECK (rows_duplicate >= 0),
    rows_rejected   integer     NOT NULL CHECK (rows_rejected >= 0),
    messages        integer     NOT NULL CHECK (messages >= 0),
    min_received_at timestamptz,
    max_received_at timestamptz,
    -- SHA-256 over the canonical encoding of the rows this batch inserted,
    -- in (message_id, received_at) order: the base of tamper evidence.
    rows_sha256     bytea       NOT NULL,
    ingest_role     name        NOT NULL DEFAULT session_user
);
ALTER TABLE apigee.ingest_batches OWNER TO apigee_owner;
CREATE SEQUENCE apigee.ingest_batch_id_seq AS bigint;
ALTER SEQUENCE apigee.ingest_batch_id_seq OWNER TO apigee_owner;

-- One row per (batch, minute) a batch wrote into. functions/rollup recomputes
-- exactly these minutes (and their hours) and deletes the rows it consumed.
CREATE TABLE apigee.rollup_invalidations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id     bigint      NOT NULL,
    bucket_start timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE apigee.rollup_invalidations OWNER TO apigee_owner;
CREATE INDEX rollup_invalidations_bucket_idx ON apigee.rollup_invalidations (bucket_start);

-- Immutability: row triggers for UPDATE/DELETE, a statement trigger for
-- TRUNCATE, and no UPDATE/DELETE/TRUNCATE grant to anyone.
CREATE TRIGGER api_calls_append_only BEFORE UPDATE OR DELETE ON apigee.api_calls
    FOR EACH ROW EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER api_calls_no_truncate BEFORE TRUNCATE ON apigee.api_calls
    FOR EACH STATEMENT EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER ingest_rejects_append_only BEFORE UPDATE OR DELETE ON apigee.ingest_rejects
    FOR EACH ROW EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER ingest_rejects_no_truncate BEFORE TRUNCATE ON apigee.ingest_rejects
    FOR EACH STATEMENT EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER ingest_batches_append_only BEFORE UPDATE OR DELETE ON apigee.ingest_batches
    FOR EACH ROW EXECUTE FUNCTION apigee.forbid_change();
CREATE TRIGGER ingest_batches_no_truncate BEFORE TRUNCATE ON apigee.ingest_batches
    FOR EACH STATEMENT EXECUTE FUNCTION apigee.forbid_change();

REVOKE ALL ON apigee.api_calls, apigee.ingest_rejects, apigee.ingest_batches, apigee.rollup_invalidations FROM PUBLIC;

-- Ingest: INSERT only. SELECT on the key columns lets INSERT … RETURNING
-- report which rows were new (exactly-once accounting and batch hashes).
GRANT INSERT ON apigee.api_calls, apigee.ingest_rejects, apigee.ingest_batches, apigee.rollup_invalidations TO apigee_ingest;
GRANT SELECT (message_id, received_at) ON apigee.api_calls TO apigee_ingest;
GRANT SELECT (dedupe_key, received_at) ON apigee.ingest_rejects TO apigee_ingest;
GRANT USAGE ON SEQUENCE apigee.ingest_batch_id_seq TO apigee_ingest;

-- Rollup: reads raw rows and batches, consumes invalidations.
GRANT SELECT ON apigee.api_calls, apigee.ingest_rejects, apigee.ingest_batches TO apigee_rollup;
GRANT SELECT, DELETE ON apigee.rollup_invalidations TO apigee_rollup;

-- Readers: through row-level security only.
GRANT SELECT ON apigee.api_calls, apigee.ingest_rejects TO apigee_reader;

ALTER TABLE apigee.api_calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE apigee.ingest_rejects ENABLE ROW LEVEL SECURITY;

CREATE POLICY reader_tenants ON apigee.api_calls FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY reader_tenants ON apigee.ingest_rejects FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY ingest_insert ON apigee.api_calls FOR INSERT TO apigee_ingest WITH CHECK (true);
CREATE POLICY ingest_insert ON apigee.ingest_rejects FOR INSERT TO apigee_ingest WITH CHECK (true);
-- RETURNING needs the new rows to pass a SELECT policy; the column grants
-- above keep the ingest role to the key columns.
CREATE POLICY ingest_returning ON apigee.api_calls FOR SELECT TO apigee_ingest USING (true);
CREATE POLICY ingest_returning ON apigee.ingest_rejects FOR SELECT TO apigee_ingest USING (true);
CREATE POLICY rollup_read ON apigee.api_calls FOR SELECT TO apigee_rollup USING (true);
CREATE POLICY rollup_read ON apigee.ingest_rejects FOR SELECT TO apigee_rollup USING (true);

-- +goose Down
DROP TABLE IF EXISTS apigee.rollup_invalidations;
DROP SEQUENCE IF EXISTS apigee.ingest_batch_id_seq;
DROP TABLE IF EXISTS apigee.ingest_batches;
DROP TABLE IF EXISTS apigee.ingest_rejects;
DROP TABLE IF EXISTS apigee.api_calls;
DELETE FROM apigee.settings WHERE key = 'storage';
