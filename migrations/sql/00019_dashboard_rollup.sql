-- Narrow rollups for the dashboards (issue 13): apigee.proxy_calls_1m and
-- apigee.proxy_calls_1h hold one row per bucket × (tenant, organization,
-- environment, apiproxy), beside the 8-dimension api_calls_1m/1h (00011).
-- At production density the wide minute rollup keeps 40 % as many rows as
-- the raw table (apps × products × verbs × status codes), so a per-proxy
-- panel read from it costs about what raw rows cost; the narrow rows are a
-- few per proxy and bucket whatever the traffic.
--
-- Status classes are count columns (status_2xx … status_5xx; other codes
-- are calls minus their sum); errors count is_error or a status ≥ 500 as in
-- 00011, and client errors are status_4xx. Latency histograms are the same
-- apigee.latency_hist (sorted, no repeated bins), so percentiles merge
-- across buckets and stay within the bins' 2 %.
--
-- functions/rollup fills them in the same statement and transaction as the
-- wide rows (one GROUP BY with grouping sets over the raw rows), replacing
-- recomputed minutes and hours, so late data stays exact.
--
-- Storage, grants, row-level security and retention copy 00011/00014:
-- hypertables (1-day / 7-day chunks in apigee_chunks) or daily/monthly
-- partitions made by apigee.ensure_rollup_partitions (replaced here to make
-- both tables' partitions); apigee.apply_retention's tiers 1m and 1h drop
-- the narrow table's ranges with the wide one's (replaced here);
-- apigee.harden_chunks covers their chunks (it walks every apigee table).
-- The per-proxy views of 00012 keep their names and columns and now read
-- the narrow tables.
--
-- Existing installations get empty narrow tables: rows appear as minutes
-- are recomputed. Not backfilled here (a full recompute of the retained raw
-- rows does not belong in a migration's transaction); the owner backfills
-- by invalidating the retained minutes, which the rollup then works off
-- batch by batch:
--   INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
--   SELECT DISTINCT 0, bucket_start FROM apigee.api_calls_1m
--   WHERE bucket_start >= coalesce((SELECT raw_dropped_before FROM apigee.rollup_state), '-infinity');

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
        calls                bigint      NOT NULL,
        errors               bigint      NOT NULL,
        status_2xx           bigint      NOT NULL,
        status_3xx           bigint      NOT NULL,
        status_4xx           bigint      NOT NULL,
        status_5xx           bigint      NOT NULL,
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
    FOREACH t IN ARRAY ARRAY['proxy_calls_1m', 'proxy_calls_1h'] LOOP
        EXECUTE format(
            'CREATE TABLE apigee.%I (%s, CONSTRAINT %I UNIQUE (bucket_start, tenant, organization, environment, apiproxy)) %s',
            t, cols, t || '_key', CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (bucket_start)' END);
    END LOOP;
    IF ts THEN
        PERFORM create_hypertable('apigee.proxy_calls_1m', 'bucket_start',
            chunk_time_interval => INTERVAL '1 day', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
        PERFORM create_hypertable('apigee.proxy_calls_1h', 'bucket_start',
            chunk_time_interval => INTERVAL '7 days', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
    END IF;
END
$mig$;
-- +goose StatementEnd

ALTER TABLE apigee.proxy_calls_1m OWNER TO apigee_owner;
ALTER TABLE apigee.proxy_calls_1h OWNER TO apigee_owner;
CREATE INDEX proxy_calls_1m_proxy_idx ON apigee.proxy_calls_1m (tenant, apiproxy, bucket_start DESC);
CREATE INDEX proxy_calls_1h_proxy_idx ON apigee.proxy_calls_1h (tenant, apiproxy, bucket_start DESC);

REVOKE ALL ON apigee.proxy_calls_1m, apigee.proxy_calls_1h FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON apigee.proxy_calls_1m, apigee.proxy_calls_1h TO apigee_rollup;
GRANT SELECT ON apigee.proxy_calls_1m, apigee.proxy_calls_1h TO apigee_reader;

ALTER TABLE apigee.proxy_calls_1m ENABLE ROW LEVEL SECURITY;
ALTER TABLE apigee.proxy_calls_1h ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_tenants ON apigee.proxy_calls_1m FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY reader_tenants ON apigee.proxy_calls_1h FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY rollup_all ON apigee.proxy_calls_1m TO apigee_rollup USING (true) WITH CHECK (true);
CREATE POLICY rollup_all ON apigee.proxy_calls_1h TO apigee_rollup USING (true) WITH CHECK (true);

-- +goose StatementBegin
-- ensure_rollup_partitions creates the partitions of api_calls_1m and proxy_calls_1m
-- (daily) and api_calls_1h and proxy_calls_1h (monthly) covering [from_day, to_day] on plain
-- PostgreSQL; TimescaleDB creates chunks itself.
CREATE OR REPLACE FUNCTION apigee.ensure_rollup_partitions(from_day date, to_day date) RETURNS integer
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
        IF apigee.create_partition('apigee.proxy_calls_1m', 'proxy_calls_1m_' || to_char(d, 'YYYYMMDD'),
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
        IF apigee.create_partition('apigee.proxy_calls_1h', 'proxy_calls_1h_' || to_char(m, 'YYYYMM'),
                m::timestamp AT TIME ZONE 'UTC', (m + INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC') THEN
            created := created + 1;
        END IF;
        m := (m + INTERVAL '1 month')::date;
    END LOOP;
    RETURN created;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.apply_retention(tier text, keep interval)
RETURNS TABLE (relation text, range_from timestamptz, range_to timestamptz, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET lock_timeout = '2s'
AS $$
DECLARE
    tbls     text[];
    tbl      text;
    floor_   interval;
    cutoff   timestamptz;
    ts       boolean := (SELECT value FROM apigee.settings WHERE key = 'storage') = 'timescaledb';
    ext      text;
    hold     boolean := tier IN ('raw', '1m', '1h');
    p        record;
    q        text;
BEGIN
    -- A rollup tier holds the wide and the narrow (00019) table.
    tbls := CASE tier
        WHEN 'raw' THEN ARRAY['api_calls']
        WHEN 'rejects' THEN ARRAY['ingest_rejects']
        WHEN '1m' THEN ARRAY['api_calls_1m', 'proxy_calls_1m']
        WHEN '1h' THEN ARRAY['api_calls_1h', 'proxy_calls_1h']
    END;
    IF tbls IS NULL THEN
        RAISE EXCEPTION 'apigee.apply_retention: unknown tier %; use raw, rejects, 1m or 1h', tier
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    floor_ := coalesce((SELECT value::interval FROM apigee.settings WHERE key = 'retention_floor_' || tier), INTERVAL '7 days');
    IF keep IS NULL OR keep < floor_ THEN
        RAISE EXCEPTION 'apigee.apply_retention: % retention % is below the floor %', tier, keep, floor_
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('the floor is apigee.settings key retention_floor_%s', tier);
    END IF;
    cutoff := now() - keep;
    IF ts THEN
        SELECT n.nspname INTO ext FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb';
    END IF;

    -- Dynamic: timescaledb_information does not exist on plain PostgreSQL.
    IF ts THEN
        q := $q$
            SELECT format('%I.%I', ch.chunk_schema, ch.chunk_name) AS rel, ch.range_start AS lo, ch.range_end AS hi
            FROM timescaledb_information.chunks ch
            WHERE ch.hypertable_schema = 'apigee' AND ch.hypertable_name = $1
            ORDER BY ch.range_start$q$;
    ELSE
        q := $q$
            SELECT b.rel, b.bounds[1]::timestamptz AS lo, b.bounds[2]::timestamptz AS hi
            FROM (
                SELECT i.inhrelid::regclass::text AS rel,
                       regexp_match(pg_get_expr(k.relpartbound, k.oid), $r$FROM \('([^']*)'\) TO \('([^']*)'\)$r$) AS bounds
                FROM pg_inherits i
                JOIN pg_class k ON k.oid = i.inhrelid
                WHERE i.inhparent = format('apigee.%I', $1)::regclass
            ) b
            WHERE b.bounds IS NOT NULL
            ORDER BY 2$q$;
    END IF;
    FOREACH tbl IN ARRAY tbls LOOP
        FOR p IN EXECUTE q USING tbl
        LOOP
            EXIT WHEN p.hi > cutoff;
            relation := p.rel;
            range_from := p.lo;
            range_to := p.hi;
            BEGIN
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.rel);
            EXCEPTION WHEN lock_not_available THEN
                outcome := 'busy';
                RETURN NEXT;
                EXIT;
            END;
            IF hold AND EXISTS (SELECT 1 FROM apigee.rollup_invalidations v
                                WHERE v.bucket_start >= p.lo AND v.bucket_start < p.hi) THEN
                outcome := 'held';
                RETURN NEXT;
                EXIT;
            END IF;
            IF ts THEN
                EXECUTE format('SELECT %I.drop_chunks(%L::regclass, older_than => %L::timestamptz, newer_than => %L::timestamptz)',
                    ext, format('apigee.%I', tbl), p.hi, p.lo);
            ELSE
                EXECUTE format('ALTER TABLE apigee.%I DETACH PARTITION %s', tbl, p.rel);
                EXECUTE format('DROP TABLE %s', p.rel);
            END IF;
            IF tier = 'raw' THEN
                UPDATE apigee.rollup_state
                SET raw_dropped_before = greatest(coalesce(raw_dropped_before, '-infinity'), p.hi);
            END IF;
            outcome := 'dropped';
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- The per-proxy views of 00012, same names and columns, now reading the
-- narrow rows: a minute or hour is one row, so nothing is merged.
CREATE OR REPLACE VIEW apigee.proxy_latency_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM apigee.proxy_calls_1m;

CREATE OR REPLACE VIEW apigee.proxy_latency_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM apigee.proxy_calls_1h;

-- Per proxy and UTC day: 24 narrow hour rows merged per row.
CREATE OR REPLACE VIEW apigee.proxy_latency_1d WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT date_trunc('day', bucket_start, 'UTC') AS bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.proxy_calls_1h
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

CREATE OR REPLACE VIEW apigee.error_rate_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls,
       errors,
       status_4xx AS client_errors,
       errors::float8 / nullif(calls, 0) AS error_rate,
       status_4xx::float8 / nullif(calls, 0) AS client_error_rate
FROM apigee.proxy_calls_1m;

CREATE OR REPLACE VIEW apigee.error_rate_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls,
       errors,
       status_4xx AS client_errors,
       errors::float8 / nullif(calls, 0) AS error_rate,
       status_4xx::float8 / nullif(calls, 0) AS client_error_rate
FROM apigee.proxy_calls_1h;

SELECT apigee.ensure_rollup_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
SELECT apigee.harden_chunks();

-- +goose Down
-- Per proxy and minute.
CREATE OR REPLACE VIEW apigee.proxy_latency_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1m
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Per proxy and hour.
CREATE OR REPLACE VIEW apigee.proxy_latency_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1h
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Per proxy and UTC day, merged from the hourly rows.
CREATE OR REPLACE VIEW apigee.proxy_latency_1d WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT date_trunc('day', bucket_start, 'UTC') AS bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1h
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Errors (is_error or status >= 500) and client errors (4xx) per proxy and minute.
CREATE OR REPLACE VIEW apigee.error_rate_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       sum(calls)::bigint AS calls,
       sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors,
       sum(errors)::float8 / nullif(sum(calls), 0) AS error_rate,
       sum(client_errors)::float8 / nullif(sum(calls), 0) AS client_error_rate
FROM apigee.api_calls_1m
GROUP BY bucket_start, tenant, organization, environment, apiproxy;

-- The same per proxy and hour.
CREATE OR REPLACE VIEW apigee.error_rate_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       sum(calls)::bigint AS calls,
       sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors,
       sum(errors)::float8 / nullif(sum(calls), 0) AS error_rate,
       sum(client_errors)::float8 / nullif(sum(calls), 0) AS client_error_rate
FROM apigee.api_calls_1h
GROUP BY bucket_start, tenant, organization, environment, apiproxy;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.apply_retention(tier text, keep interval)
RETURNS TABLE (relation text, range_from timestamptz, range_to timestamptz, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET lock_timeout = '2s'
AS $$
DECLARE
    tbl      text;
    floor_   interval;
    cutoff   timestamptz;
    ts       boolean := (SELECT value FROM apigee.settings WHERE key = 'storage') = 'timescaledb';
    ext      text;
    hold     boolean := tier IN ('raw', '1m', '1h');
    p        record;
    q        text;
BEGIN
    tbl := CASE tier
        WHEN 'raw' THEN 'api_calls'
        WHEN 'rejects' THEN 'ingest_rejects'
        WHEN '1m' THEN 'api_calls_1m'
        WHEN '1h' THEN 'api_calls_1h'
    END;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'apigee.apply_retention: unknown tier %; use raw, rejects, 1m or 1h', tier
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    floor_ := coalesce((SELECT value::interval FROM apigee.settings WHERE key = 'retention_floor_' || tier), INTERVAL '7 days');
    IF keep IS NULL OR keep < floor_ THEN
        RAISE EXCEPTION 'apigee.apply_retention: % retention % is below the floor %', tier, keep, floor_
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('the floor is apigee.settings key retention_floor_%s', tier);
    END IF;
    cutoff := now() - keep;
    IF ts THEN
        SELECT n.nspname INTO ext FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb';
    END IF;

    -- Dynamic: timescaledb_information does not exist on plain PostgreSQL.
    IF ts THEN
        q := $q$
            SELECT format('%I.%I', ch.chunk_schema, ch.chunk_name) AS rel, ch.range_start AS lo, ch.range_end AS hi
            FROM timescaledb_information.chunks ch
            WHERE ch.hypertable_schema = 'apigee' AND ch.hypertable_name = $1
            ORDER BY ch.range_start$q$;
    ELSE
        q := $q$
            SELECT b.rel, b.bounds[1]::timestamptz AS lo, b.bounds[2]::timestamptz AS hi
            FROM (
                SELECT i.inhrelid::regclass::text AS rel,
                       regexp_match(pg_get_expr(k.relpartbound, k.oid), $r$FROM \('([^']*)'\) TO \('([^']*)'\)$r$) AS bounds
                FROM pg_inherits i
                JOIN pg_class k ON k.oid = i.inhrelid
                WHERE i.inhparent = format('apigee.%I', $1)::regclass
            ) b
            WHERE b.bounds IS NOT NULL
            ORDER BY 2$q$;
    END IF;
    FOR p IN EXECUTE q USING tbl
    LOOP
        EXIT WHEN p.hi > cutoff;
        relation := p.rel;
        range_from := p.lo;
        range_to := p.hi;
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.rel);
        EXCEPTION WHEN lock_not_available THEN
            outcome := 'busy';
            RETURN NEXT;
            EXIT;
        END;
        IF hold AND EXISTS (SELECT 1 FROM apigee.rollup_invalidations v
                            WHERE v.bucket_start >= p.lo AND v.bucket_start < p.hi) THEN
            outcome := 'held';
            RETURN NEXT;
            EXIT;
        END IF;
        IF ts THEN
            EXECUTE format('SELECT %I.drop_chunks(%L::regclass, older_than => %L::timestamptz, newer_than => %L::timestamptz)',
                ext, format('apigee.%I', tbl), p.hi, p.lo);
        ELSE
            EXECUTE format('ALTER TABLE apigee.%I DETACH PARTITION %s', tbl, p.rel);
            EXECUTE format('DROP TABLE %s', p.rel);
        END IF;
        IF tier = 'raw' THEN
            UPDATE apigee.rollup_state
            SET raw_dropped_before = greatest(coalesce(raw_dropped_before, '-infinity'), p.hi);
        END IF;
        outcome := 'dropped';
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- ensure_rollup_partitions creates the partitions of api_calls_1m (daily)
-- and api_calls_1h (monthly) covering [from_day, to_day] on plain
-- PostgreSQL; TimescaleDB creates chunks itself.
CREATE OR REPLACE FUNCTION apigee.ensure_rollup_partitions(from_day date, to_day date) RETURNS integer
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

DROP TABLE IF EXISTS apigee.proxy_calls_1h;
DROP TABLE IF EXISTS apigee.proxy_calls_1m;
