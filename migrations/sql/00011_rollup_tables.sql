-- Rollups kept by functions/rollup in place of continuous aggregates:
-- api_calls_1m (one row per minute × dimensions, recomputed from raw rows)
-- and api_calls_1h (one row per hour × dimensions, recomputed from the
-- minute rows). The dimensions are tenant, organization, environment,
-- apiproxy, api_product, developer_app, request_verb and
-- response_status_code; api_product and developer_app may be NULL, and the
-- unique key treats NULLs as equal so a bucket cannot hold a group twice.
--
-- Storage follows apigee.settings('storage'): hypertables (1-day chunks for
-- minutes, 7-day chunks for hours) in apigee_chunks, or range partitions
-- (daily api_calls_1m_YYYYMMDD, monthly api_calls_1h_YYYYMM) created by
-- apigee.ensure_rollup_partitions. Retention drops whole chunks/partitions.
--
-- Metrics: errors count calls with is_error or a status ≥ 500;
-- client_errors count statuses 400–499. Latency columns cover the calls
-- that carried the value (*_ms_count), so averages are sum/count.
--
-- Also here: apigee.rollup_state, the single row holding the rollup's
-- watermarks. apigee.harden_chunks (00003) covers the rollups' chunks too.

-- +goose Up
-- +goose StatementBegin
DO $mig$
DECLARE
    ts boolean := (SELECT value FROM apigee.settings WHERE key = 'storage') = 'timescaledb';
    cols text := $c$
        bucket_start         timestamptz NOT NULL,
        tenant               text        NOT NULL,
        organization         text        NOT NULL,
        environment          text        NOT NULL,
        apiproxy             text        NOT NULL,
        api_product          text,
        developer_app        text,
        request_verb         text        NOT NULL,
        response_status_code smallint    NOT NULL,
        calls                bigint      NOT NULL,
        errors               bigint      NOT NULL,
        client_errors        bigint      NOT NULL,
        request_bytes        bigint      NOT NULL,
        response_bytes       bigint      NOT NULL,
        total_ms_count       bigint      NOT NULL,
        total_ms_sum         bigint      NOT NULL,
        total_ms_min         integer,
        total_ms_max         integer,
        total_ms_hist        apigee.latency_hist NOT NULL,
        target_ms_count      bigint      NOT NULL,
        target_ms_sum        bigint      NOT NULL,
        target_ms_min        integer,
        target_ms_max        integer,
        target_ms_hist       apigee.latency_hist NOT NULL,
        refreshed_at         timestamptz NOT NULL DEFAULT now()
    $c$;
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_calls_1m', 'api_calls_1h'] LOOP
        EXECUTE format(
            'CREATE TABLE apigee.%I (%s, CONSTRAINT %I UNIQUE NULLS NOT DISTINCT (bucket_start, tenant, organization, environment, apiproxy, api_product, developer_app, request_verb, response_status_code)) %s',
            t, cols, t || '_key', CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (bucket_start)' END);
    END LOOP;
    IF ts THEN
        PERFORM create_hypertable('apigee.api_calls_1m', 'bucket_start',
            chunk_time_interval => INTERVAL '1 day', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
        PERFORM create_hypertable('apigee.api_calls_1h', 'bucket_start',
            chunk_time_interval => INTERVAL '7 days', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
    END IF;
END
$mig$;
-- +goose StatementEnd

ALTER TABLE apigee.api_calls_1m OWNER TO apigee_owner;
ALTER TABLE apigee.api_calls_1h OWNER TO apigee_owner;
CREATE INDEX api_calls_1m_proxy_idx ON apigee.api_calls_1m (tenant, apiproxy, bucket_start DESC);
CREATE INDEX api_calls_1h_proxy_idx ON apigee.api_calls_1h (tenant, apiproxy, bucket_start DESC);

CREATE TABLE apigee.rollup_state (
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Every raw row older than this has been dropped by retention (set only
    -- by apigee.apply_retention). Minutes before it are never recomputed:
    -- their raw rows are gone and a recompute would erase the rollup.
    raw_dropped_before        timestamptz,
    -- Anomaly detection has looked at every minute before this.
    anomalies_evaluated_until timestamptz,
    last_run_at               timestamptz,
    last_run                  jsonb
);
ALTER TABLE apigee.rollup_state OWNER TO apigee_owner;
INSERT INTO apigee.rollup_state DEFAULT VALUES;

-- +goose StatementBegin
-- ensure_rollup_partitions creates the partitions of api_calls_1m (daily)
-- and api_calls_1h (monthly) covering [from_day, to_day] on plain
-- PostgreSQL; TimescaleDB creates chunks itself.
CREATE FUNCTION apigee.ensure_rollup_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d date;
    m date;
    created integer := 0;
BEGIN
    IF (SELECT value FROM apigee.settings WHERE key = 'storage') <> 'partitioned' THEN
        RETURN 0;
    END IF;
    IF from_day IS NULL OR to_day IS NULL OR to_day < from_day THEN
        RAISE EXCEPTION 'apigee.ensure_rollup_partitions: bad range [%, %]', from_day, to_day;
    END IF;
    IF to_day - from_day > 400 THEN
        RAISE EXCEPTION 'apigee.ensure_rollup_partitions: at most 400 days at once, asked for %', to_day - from_day;
    END IF;
    d := from_day;
    WHILE d <= to_day LOOP
        IF apigee.create_partition('apigee.api_calls_1m', 'api_calls_1m_' || to_char(d, 'YYYYMMDD'),
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC') THEN
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    m := date_trunc('month', from_day)::date;
    WHILE m <= to_day LOOP
        IF apigee.create_partition('apigee.api_calls_1h', 'api_calls_1h_' || to_char(m, 'YYYYMM'),
                m::timestamp AT TIME ZONE 'UTC', (m + INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC') THEN
            created := created + 1;
        END IF;
        m := (m + INTERVAL '1 month')::date;
    END LOOP;
    RETURN created;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.ensure_rollup_partitions(date, date) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.ensure_rollup_partitions(date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.ensure_rollup_partitions(date, date) TO apigee_rollup;

REVOKE ALL ON apigee.api_calls_1m, apigee.api_calls_1h, apigee.rollup_state FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON apigee.api_calls_1m, apigee.api_calls_1h TO apigee_rollup;
GRANT SELECT ON apigee.api_calls_1m, apigee.api_calls_1h TO apigee_reader;
GRANT SELECT ON apigee.rollup_state TO apigee_rollup;
GRANT UPDATE (anomalies_evaluated_until, last_run_at, last_run) ON apigee.rollup_state TO apigee_rollup;

ALTER TABLE apigee.api_calls_1m ENABLE ROW LEVEL SECURITY;
ALTER TABLE apigee.api_calls_1h ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_tenants ON apigee.api_calls_1m FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY reader_tenants ON apigee.api_calls_1h FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY rollup_all ON apigee.api_calls_1m TO apigee_rollup USING (true) WITH CHECK (true);
CREATE POLICY rollup_all ON apigee.api_calls_1h TO apigee_rollup USING (true) WITH CHECK (true);

SELECT apigee.ensure_rollup_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);

-- +goose Down
DROP FUNCTION IF EXISTS apigee.ensure_rollup_partitions(date, date);
DROP TABLE IF EXISTS apigee.rollup_state;
DROP TABLE IF EXISTS apigee.api_calls_1h;
DROP TABLE IF EXISTS apigee.api_calls_1m;
