-- Per developer app rollups (issue 13): apigee.app_calls_1m and
-- apigee.app_calls_1h hold one row per bucket × (tenant, organization,
-- environment, developer_app), with the columns of the per-proxy rollups
-- (00019). The dashboard's *Top developer apps* panel read the wide rollup,
-- whose rows at production density hold two or three calls each (apps ×
-- proxies × products × verbs × status codes), so it cost what raw rows cost;
-- an app has one row here per bucket and environment whatever the traffic.
-- The panel therefore counts an app's calls across all proxies (its title
-- says so); an app's calls to one proxy are a question for the wide rollup.
-- developer_app is NULL for calls without an app; the key treats NULLs as
-- equal, as the wide table's did.
--
-- functions/rollup fills them from the same scan as the other rollups, in
-- the same transaction, so late data stays exact.
--
-- Which tables a retention tier or a partition width covers is now one
-- function, apigee.tier_tables, read by apigee.apply_retention and
-- apigee.ensure_rollup_partitions (both replaced here, otherwise as in
-- 00019), so the next rollup table changes one list.
--
-- Existing installations get empty app tables; backfill as 00019 describes
-- (invalidate the retained minutes).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION apigee.tier_tables(tier text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE tier
        WHEN 'raw' THEN ARRAY['api_calls']
        WHEN 'rejects' THEN ARRAY['ingest_rejects']
        WHEN '1m' THEN ARRAY['api_calls_1m', 'proxy_calls_1m', 'app_calls_1m']
        WHEN '1h' THEN ARRAY['api_calls_1h', 'proxy_calls_1h', 'app_calls_1h']
    END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.tier_tables(text) OWNER TO apigee_owner;

-- +goose StatementBegin
DO $mig$
DECLARE
    ts boolean := (SELECT value FROM apigee.settings WHERE key = 'storage') = 'timescaledb';
    cols text := $c$
        bucket_start         timestamptz NOT NULL,
        tenant               text        NOT NULL,
        organization         text        NOT NULL,
        environment          text        NOT NULL,
        developer_app        text,
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
    FOREACH t IN ARRAY ARRAY['app_calls_1m', 'app_calls_1h'] LOOP
        EXECUTE format(
            'CREATE TABLE apigee.%I (%s, CONSTRAINT %I UNIQUE NULLS NOT DISTINCT (bucket_start, tenant, organization, environment, developer_app)) %s',
            t, cols, t || '_key', CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (bucket_start)' END);
    END LOOP;
    IF ts THEN
        PERFORM create_hypertable('apigee.app_calls_1m', 'bucket_start',
            chunk_time_interval => INTERVAL '1 day', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
        PERFORM create_hypertable('apigee.app_calls_1h', 'bucket_start',
            chunk_time_interval => INTERVAL '7 days', associated_schema_name => 'apigee_chunks',
            create_default_indexes => false);
    END IF;
END
$mig$;
-- +goose StatementEnd

ALTER TABLE apigee.app_calls_1m OWNER TO apigee_owner;
ALTER TABLE apigee.app_calls_1h OWNER TO apigee_owner;

REVOKE ALL ON apigee.app_calls_1m, apigee.app_calls_1h FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON apigee.app_calls_1m, apigee.app_calls_1h TO apigee_rollup;
GRANT SELECT ON apigee.app_calls_1m, apigee.app_calls_1h TO apigee_reader;

ALTER TABLE apigee.app_calls_1m ENABLE ROW LEVEL SECURITY;
ALTER TABLE apigee.app_calls_1h ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_tenants ON apigee.app_calls_1m FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY reader_tenants ON apigee.app_calls_1h FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY rollup_all ON apigee.app_calls_1m TO apigee_rollup USING (true) WITH CHECK (true);
CREATE POLICY rollup_all ON apigee.app_calls_1h TO apigee_rollup USING (true) WITH CHECK (true);

-- +goose StatementBegin
-- ensure_rollup_partitions creates the partitions of every minute rollup
-- (daily) and every hour rollup (monthly) covering [from_day, to_day] on
-- plain PostgreSQL; TimescaleDB creates chunks itself.
CREATE OR REPLACE FUNCTION apigee.ensure_rollup_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d date;
    m date;
    t text;
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
        FOREACH t IN ARRAY apigee.tier_tables('1m') LOOP
            IF apigee.create_partition(format('apigee.%I', t)::regclass, t || '_' || to_char(d, 'YYYYMMDD'),
                    d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC') THEN
                created := created + 1;
            END IF;
        END LOOP;
        d := d + 1;
    END LOOP;
    m := date_trunc('month', from_day)::date;
    WHILE m <= to_day LOOP
        FOREACH t IN ARRAY apigee.tier_tables('1h') LOOP
            IF apigee.create_partition(format('apigee.%I', t)::regclass, t || '_' || to_char(m, 'YYYYMM'),
                    m::timestamp AT TIME ZONE 'UTC', (m + INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC') THEN
                created := created + 1;
            END IF;
        END LOOP;
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
    tbls := apigee.tier_tables(tier);
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

-- +goose StatementBegin
-- app_calls_between(t0, t1) is apigee.proxy_calls_between (00022) for the
-- per-app rollups: every minute in [t0, t1] once, whole UTC hours from the
-- hour rows, the ragged ends from the minute rows.
CREATE FUNCTION apigee.app_calls_between(t0 timestamptz, t1 timestamptz) RETURNS SETOF apigee.app_calls_1m
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT m.* FROM apigee.app_calls_1m m
    WHERE m.bucket_start BETWEEN t0 AND t1
      AND m.bucket_start < date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT h.* FROM apigee.app_calls_1h h
    WHERE h.bucket_start >= date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND h.bucket_start < date_bin('1 hour', t1 + INTERVAL '1 minute', TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT m.* FROM apigee.app_calls_1m m
    WHERE m.bucket_start BETWEEN t0 AND t1
      AND m.bucket_start >= greatest(date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                                     date_bin('1 hour', t1 + INTERVAL '1 minute', TIMESTAMPTZ '2000-01-01 00:00:00+00'))
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.app_calls_between(timestamptz, timestamptz) OWNER TO apigee_owner;

SELECT apigee.ensure_rollup_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
SELECT apigee.harden_chunks();

-- +goose Down
DROP FUNCTION IF EXISTS apigee.app_calls_between(timestamptz, timestamptz);
-- The replaced functions read apigee.tier_tables; without the app tables
-- in it they do what 00019's did.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.tier_tables(tier text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE tier
        WHEN 'raw' THEN ARRAY['api_calls']
        WHEN 'rejects' THEN ARRAY['ingest_rejects']
        WHEN '1m' THEN ARRAY['api_calls_1m', 'proxy_calls_1m']
        WHEN '1h' THEN ARRAY['api_calls_1h', 'proxy_calls_1h']
    END
$$;
-- +goose StatementEnd
DROP TABLE IF EXISTS apigee.app_calls_1h;
DROP TABLE IF EXISTS apigee.app_calls_1m;
