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
--   * apigee.latency_hist_merged_quantile(hs, q): the quantile of a few
--     histograms together, walking them side by side from the end nearer
--     q's rank instead of merging them first (a group of the per-proxy
--     panel is one minute of one proxy: prod and test, two rows). More
--     than 8 histograms are merged with latency_hist_merge and walked once.
--   * apigee.latency_hist_quantile(h, q) walks from the end nearer q's
--     rank (p95 reads the top twentieth, not all the bins); same results.
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

-- +goose StatementBegin
-- latency_hist_merged_quantile(hs, q) is
-- latency_hist_quantile(<hs merged>, q); NULL elements count as empty.
CREATE FUNCTION apigee.latency_hist_merged_quantile(hs apigee.latency_hist[], q double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    up  boolean := q >= 0.5;
    -- All bins and counts end to end; histogram j is b[s[j]] … b[s[j+1]−1],
    -- and p[j] is its next entry in walking order.
    b   integer[] := '{}';
    c   bigint[]  := '{}';
    s   integer[] := '{}';
    p   integer[] := '{}';
    h   apigee.latency_hist;
    k   integer := 0;
    n   bigint := 0;
    x   bigint;
    r   double precision;
    lo  bigint;
    hi  bigint;
    cum bigint := 0;
    blo integer;
    bhi integer;
    j   integer;
    v   integer;
BEGIN
    IF q < 0 OR q > 1 OR q = 'NaN'::float8 THEN
        RAISE EXCEPTION 'apigee.latency_hist_merged_quantile: q must be in [0, 1], not %', q;
    END IF;
    IF cardinality(hs) > 8 THEN
        -- Each step compares every histogram's next bin: merge many first.
        RETURN apigee.latency_hist_quantile((SELECT apigee.latency_hist_merge(m) FROM unnest(hs) m), q);
    END IF;
    FOREACH h IN ARRAY hs LOOP
        CONTINUE WHEN h.bins IS NULL OR h.counts IS NULL OR cardinality(h.bins) = 0
            OR cardinality(h.bins) <> cardinality(h.counts);
        k := k + 1;
        s[k] := cardinality(b) + 1;
        b := b || h.bins;
        c := c || h.counts;
        p[k] := CASE WHEN up THEN cardinality(b) ELSE s[k] END;
    END LOOP;
    IF k = 0 THEN
        RETURN NULL;
    END IF;
    s[k + 1] := cardinality(b) + 1;
    FOREACH x IN ARRAY c LOOP
        n := n + x;
    END LOOP;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    r := q * (n - 1);
    lo := floor(r);
    hi := ceil(r);
    LOOP
        -- The histogram whose next bin comes first in walking order.
        j := 0;
        FOR i IN 1 .. k LOOP
            IF p[i] >= s[i] AND p[i] < s[i + 1]
               AND (j = 0 OR (up AND b[p[i]] > v) OR (NOT up AND b[p[i]] < v)) THEN
                j := i;
                v := b[p[i]];
            END IF;
        END LOOP;
        EXIT WHEN j = 0;
        cum := cum + c[p[j]];
        IF up THEN
            p[j] := p[j] - 1;
            IF bhi IS NULL AND n - cum <= hi THEN
                bhi := v;
            END IF;
            IF n - cum <= lo THEN
                blo := v;
                EXIT;
            END IF;
        ELSE
            p[j] := p[j] + 1;
            IF blo IS NULL AND cum > lo THEN
                blo := v;
            END IF;
            IF cum > hi THEN
                bhi := v;
                EXIT;
            END IF;
        END IF;
    END LOOP;
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

ALTER FUNCTION apigee.latency_hist_merged_quantile(apigee.latency_hist[], double precision) OWNER TO apigee_owner;
ALTER FUNCTION apigee.proxy_calls_between(timestamptz, timestamptz) OWNER TO apigee_owner;

-- +goose Down
DROP FUNCTION IF EXISTS apigee.proxy_calls_between(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS apigee.latency_hist_merged_quantile(apigee.latency_hist[], double precision);
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
