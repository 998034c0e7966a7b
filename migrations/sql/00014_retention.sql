-- Retention, the one way rows leave the raw tables: whole chunks
-- (TimescaleDB drop_chunks) or whole daily partitions (detach, then drop)
-- whose entire range is older than now() − keep. Never a row DELETE.
--
-- apigee.apply_retention is owner-owned and SECURITY DEFINER because only
-- the owner may drop chunks; functions/rollup (apigee_rollup) calls it. It
-- is narrow: four fixed tiers, and keep may not go below the tier's floor in
-- apigee.settings ('retention_floor_<tier>', owner-controlled), so a
-- compromised rollup login cannot wipe recent audit data.
--
-- Raw rows (and minute and hour rollups) are kept while their rollups are
-- incomplete: ranges are visited oldest first, and the first one holding a
-- pending apigee.rollup_invalidations row stops the tier ('held'). The range
-- is locked before the check, so an ingest transaction still writing into it
-- has either committed (its invalidations are seen) or waits behind the
-- lock. A range whose lock is not granted within lock_timeout also stops the
-- tier ('busy') rather than stalling ingest. After dropping raw ranges the
-- function advances apigee.rollup_state.raw_dropped_before, below which the
-- rollup never recomputes a minute.

-- +goose Up
INSERT INTO apigee.settings (key, value) VALUES
    ('retention_floor_raw', '7 days'),
    ('retention_floor_rejects', '1 day'),
    ('retention_floor_1m', '7 days'),
    ('retention_floor_1h', '7 days')
ON CONFLICT (key) DO NOTHING;

-- +goose StatementBegin
CREATE FUNCTION apigee.apply_retention(tier text, keep interval)
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
ALTER FUNCTION apigee.apply_retention(text, interval) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.apply_retention(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.apply_retention(text, interval) TO apigee_rollup;

-- +goose Down
DROP FUNCTION IF EXISTS apigee.apply_retention(text, interval);
DELETE FROM apigee.settings WHERE key IN ('retention_floor_raw', 'retention_floor_rejects', 'retention_floor_1m', 'retention_floor_1h');
