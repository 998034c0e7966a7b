-- Cheaper percentile reads for the dashboards and the views (issue 13).
--
-- At production density a proxy's minute histogram holds ~50 bins for
-- ~125 calls, so merging minute rows touches about as many entries as
-- percentile_cont sorts raw values: no per-entry trick makes a merge of
-- minute rows 10 × cheaper than the raw rows. What does:
--
--   * apigee.proxy_calls_between(t0, t1): the per-proxy rollup rows that
--     cover the minutes in [t0, t1] once each, whole UTC hours from
--     proxy_calls_1h and only the ragged ends from proxy_calls_1m. The
--     panels that merge a whole window (p95 latency, Latency by proxy) read
--     it whatever Grafana's interval, so a window of whole hours merges one
--     row per proxy and hour instead of sixty. It is a single SQL SELECT,
--     STABLE and SECURITY INVOKER, so the planner inlines it: callers'
--     filters reach the tables' indexes and chunk exclusion, and the
--     caller's row-level security applies as on the tables.
--   * apigee.latency_hist_runs_quantile(bins, counts, lens, n, q): the
--     quantile of a few histograms laid end to end (apigee.array_cat_agg),
--     walked from the end nearer q's rank only as far as the rank, instead
--     of merging them first (a group of the p95-by-proxy panel is one
--     minute of one proxy: prod and test, two rows).
--   * apigee.latency_hist_quantile(h, q) walks from the end nearer q's
--     rank (p95 reads the top twentieth, not all the bins); same results.
--   * apigee.proxy_latency_1m and _1h (00019) take each row's count from
--     its *_ms_count column instead of adding up the histogram's counts.
--
-- Bins may repeat within a histogram (00018's minute rows): every walk
-- adds counts bin by bin, so repeats count like one bin with their sum.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.latency_hist_quantile(h apigee.latency_hist, q double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Local copies: indexing a field of a composite would detoast the
    -- whole array on every access.
    b   integer[] := h.bins;
    c   bigint[]  := h.counts;
    k   integer := cardinality(h.bins);
    n   bigint := 0;
    x   bigint;
    r   double precision;
    lo  bigint;
    hi  bigint;
    cum bigint := 0;
    blo integer;
    bhi integer;
BEGIN
    IF q < 0 OR q > 1 OR q = 'NaN'::float8 THEN
        RAISE EXCEPTION 'apigee.latency_hist_quantile: q must be in [0, 1], not %', q;
    END IF;
    IF k IS NULL OR c IS NULL OR k <> cardinality(c) OR k = 0 THEN
        RETURN NULL;
    END IF;
    FOREACH x IN ARRAY c LOOP
        n := n + x;
    END LOOP;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    -- percentile_cont's rank position q·(n−1), between ranks lo and hi.
    r := q * (n - 1);
    lo := floor(r);
    hi := ceil(r);
    IF q >= 0.5 THEN
        -- From the top: after adding bin i, ranks n−cum … n−1 lie at or above it.
        FOR i IN REVERSE k .. 1 LOOP
            cum := cum + c[i];
            IF bhi IS NULL AND n - cum <= hi THEN
                bhi := b[i];
            END IF;
            IF n - cum <= lo THEN
                blo := b[i];
                EXIT;
            END IF;
        END LOOP;
    ELSE
        FOR i IN 1 .. k LOOP
            cum := cum + c[i];
            IF blo IS NULL AND cum > lo THEN
                blo := b[i];
            END IF;
            IF cum > hi THEN
                bhi := b[i];
                EXIT;
            END IF;
        END LOOP;
    END IF;
    RETURN apigee.latency_hist_value(blo) + (r - lo) * (apigee.latency_hist_value(bhi) - apigee.latency_hist_value(blo));
END
$$;
-- +goose StatementEnd

-- Several histograms end to end, for latency_hist_runs_quantile:
-- ROW(array_cat_agg((h).bins), array_cat_agg((h).counts)) with
-- array_cat_agg(ARRAY[cardinality((h).bins)]) as the run lengths. Its state
-- is a plain array (array_agg's internal state takes a memory context per
-- group, which at a minute per proxy makes the hash aggregate spill), and
-- each row copies the state: meant for groups of a few rows.
CREATE AGGREGATE apigee.array_cat_agg(anycompatiblearray) (
    SFUNC = array_cat,
    STYPE = anycompatiblearray,
    PARALLEL = SAFE
);

-- +goose StatementBegin
-- latency_hist_runs_quantile(b, c, lens, n, q) is latency_hist_quantile of
-- the histograms laid end to end in (b, c): run j is the next lens[j]
-- entries (lens NULL: one run), n the count of them all (the rows'
-- *_ms_count summed: a row's histogram counts exactly its *_ms_count
-- calls), so nothing walks the bins below the answer. Each run adds its
-- bins, from the end nearer q's rank, to a dense array indexed by bin
-- until it alone has passed the farther of the two ranks; every bin
-- between that end and the answer is then complete. With another n the
-- result is meaningless (NULL when the walk runs out of values).
CREATE FUNCTION apigee.latency_hist_runs_quantile(b integer[], c bigint[], lens integer[], n bigint, q double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    up  boolean := q >= 0.5;
    k   integer := coalesce(cardinality(lens), 1);
    d   bigint[] := '{}';
    z   bigint := 0;
    r   double precision;
    lo  bigint;
    hi  bigint;
    t   bigint;
    cum bigint;
    blo integer;
    bhi integer;
    i   integer;
    e   integer;
    x   integer;
    st  integer := 1;
    zero constant integer := -2147483648;
BEGIN
    IF q < 0 OR q > 1 OR q = 'NaN'::float8 THEN
        RAISE EXCEPTION 'apigee.latency_hist_runs_quantile: q must be in [0, 1], not %', q;
    END IF;
    IF n IS NULL OR n <= 0 OR b IS NULL OR c IS NULL THEN RETURN NULL; END IF;
    r := q * (n - 1);
    lo := floor(r);
    hi := ceil(r);
    IF k = 1 THEN
        cum := 0;
        IF up THEN
            FOR i IN REVERSE cardinality(b) .. 1 LOOP
                cum := cum + c[i];
                IF bhi IS NULL AND n - cum <= hi THEN bhi := b[i]; END IF;
                IF n - cum <= lo THEN blo := b[i]; EXIT; END IF;
            END LOOP;
        ELSE
            FOR i IN 1 .. cardinality(b) LOOP
                cum := cum + c[i];
                IF blo IS NULL AND cum > lo THEN blo := b[i]; END IF;
                IF cum > hi THEN bhi := b[i]; EXIT; END IF;
            END LOOP;
        END IF;
    ELSE
        -- Each run contributes its bins from the walking end until it alone
        -- has passed the farther rank: every bin up to the answer is then
        -- complete in d (indexed by bin), zeros counted apart.
        t := CASE WHEN up THEN n - 1 - lo ELSE hi END;
        FOR j IN 1 .. k LOOP
            e := st + lens[j] - 1;
            cum := 0;
            IF up THEN
                i := e;
                WHILE i >= st AND cum <= t LOOP
                    x := b[i];
                    IF x = zero THEN z := z + c[i]; ELSE d[x] := coalesce(d[x], 0) + c[i]; END IF;
                    cum := cum + c[i];
                    i := i - 1;
                END LOOP;
            ELSE
                i := st;
                WHILE i <= e AND cum <= t LOOP
                    x := b[i];
                    IF x = zero THEN z := z + c[i]; ELSE d[x] := coalesce(d[x], 0) + c[i]; END IF;
                    cum := cum + c[i];
                    i := i + 1;
                END LOOP;
            END IF;
            st := e + 1;
        END LOOP;
        cum := 0;
        IF up THEN
            IF cardinality(d) > 0 THEN
                FOR x IN REVERSE array_upper(d, 1) .. array_lower(d, 1) LOOP
                    CONTINUE WHEN d[x] IS NULL;
                    cum := cum + d[x];
                    IF bhi IS NULL AND n - cum <= hi THEN bhi := x; END IF;
                    IF n - cum <= lo THEN blo := x; EXIT; END IF;
                END LOOP;
            END IF;
            IF blo IS NULL AND z > 0 THEN
                cum := cum + z;
                IF bhi IS NULL AND n - cum <= hi THEN bhi := zero; END IF;
                IF n - cum <= lo THEN blo := zero; END IF;
            END IF;
        ELSE
            IF z > 0 THEN
                cum := z;
                IF cum > lo THEN blo := zero; END IF;
                IF cum > hi THEN bhi := zero; END IF;
            END IF;
            IF bhi IS NULL AND cardinality(d) > 0 THEN
                FOR x IN array_lower(d, 1) .. array_upper(d, 1) LOOP
                    CONTINUE WHEN d[x] IS NULL;
                    cum := cum + d[x];
                    IF blo IS NULL AND cum > lo THEN blo := x; END IF;
                    IF cum > hi THEN bhi := x; EXIT; END IF;
                END LOOP;
            END IF;
        END IF;
    END IF;
    RETURN apigee.latency_hist_value(blo) + (r - lo) * (apigee.latency_hist_value(bhi) - apigee.latency_hist_value(blo));
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- proxy_calls_between(t0, t1) returns, for every minute bucket in
-- [t0, t1] (BETWEEN, as Grafana's $__timeFilter), exactly one row source:
-- the hour rows of the UTC hours whose 60 minutes all lie in the range,
-- and the minute rows of the rest. h0 is the first whole hour's start, h1
-- the end of the last; without a whole hour (h0 ≥ h1) every minute comes
-- from minute rows. (date_bin rounds down; t0 plus an hour less 1 µs,
-- rounded down, is t0 rounded up.)
CREATE FUNCTION apigee.proxy_calls_between(t0 timestamptz, t1 timestamptz) RETURNS SETOF apigee.proxy_calls_1m
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT m.* FROM apigee.proxy_calls_1m m
    WHERE m.bucket_start BETWEEN t0 AND t1
      AND m.bucket_start < date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT h.* FROM apigee.proxy_calls_1h h
    WHERE h.bucket_start >= date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND h.bucket_start < date_bin('1 hour', t1 + INTERVAL '1 minute', TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT m.* FROM apigee.proxy_calls_1m m
    WHERE m.bucket_start BETWEEN t0 AND t1
      AND m.bucket_start >= greatest(date_bin('1 hour', t0 + INTERVAL '59 minutes 59.999999 seconds', TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                                     date_bin('1 hour', t1 + INTERVAL '1 minute', TIMESTAMPTZ '2000-01-01 00:00:00+00'))
$$;
-- +goose StatementEnd

-- The per-proxy views of 00019, same names and columns: a row's histogram
-- counts exactly its *_ms_count calls, so the walk takes the count from
-- the row and never reads the bins below the answer.
CREATE OR REPLACE VIEW apigee.proxy_latency_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.50) AS total_ms_p50,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.90) AS total_ms_p90,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.95) AS total_ms_p95,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.50) AS target_ms_p50,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.90) AS target_ms_p90,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.95) AS target_ms_p95,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM apigee.proxy_calls_1m;

CREATE OR REPLACE VIEW apigee.proxy_latency_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.50) AS total_ms_p50,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.90) AS total_ms_p90,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.95) AS total_ms_p95,
       apigee.latency_hist_runs_quantile((total_ms_hist).bins, (total_ms_hist).counts, NULL, total_ms_count, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.50) AS target_ms_p50,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.90) AS target_ms_p90,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.95) AS target_ms_p95,
       apigee.latency_hist_runs_quantile((target_ms_hist).bins, (target_ms_hist).counts, NULL, target_ms_count, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM apigee.proxy_calls_1h;

ALTER AGGREGATE apigee.array_cat_agg(anycompatiblearray) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_runs_quantile(integer[], bigint[], integer[], bigint, double precision) OWNER TO apigee_owner;
ALTER FUNCTION apigee.proxy_calls_between(timestamptz, timestamptz) OWNER TO apigee_owner;

-- +goose Down
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

DROP FUNCTION IF EXISTS apigee.proxy_calls_between(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS apigee.latency_hist_runs_quantile(integer[], bigint[], integer[], bigint, double precision);
DROP AGGREGATE IF EXISTS apigee.array_cat_agg(anycompatiblearray);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.latency_hist_quantile(h apigee.latency_hist, q double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Local copies: indexing a field of a composite would detoast the
    -- whole array on every access.
    b   integer[] := h.bins;
    c   bigint[]  := h.counts;
    n   bigint := 0;
    r   double precision;
    lo  bigint;
    hi  bigint;
    cum bigint := 0;
    vlo double precision;
    vhi double precision;
BEGIN
    IF q < 0 OR q > 1 OR q = 'NaN'::float8 THEN
        RAISE EXCEPTION 'apigee.latency_hist_quantile: q must be in [0, 1], not %', q;
    END IF;
    IF b IS NULL OR c IS NULL OR cardinality(b) <> cardinality(c) THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. cardinality(c) LOOP
        n := n + c[i];
    END LOOP;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    r := q * (n - 1);
    lo := floor(r);
    hi := ceil(r);
    FOR i IN 1 .. cardinality(b) LOOP
        cum := cum + c[i];
        IF vlo IS NULL AND cum > lo THEN
            vlo := apigee.latency_hist_value(b[i]);
        END IF;
        IF cum > hi THEN
            vhi := apigee.latency_hist_value(b[i]);
            EXIT;
        END IF;
    END LOOP;
    RETURN vlo + (r - lo) * (vhi - vlo);
END
$$;
-- +goose StatementEnd
