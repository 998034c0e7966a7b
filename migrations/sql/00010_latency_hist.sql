-- The mergeable latency summary kept by the rollups: a log-bucketed
-- histogram in the style of DDSketch. A value v > 0 falls in bin
-- ceil(log_γ(v)) with γ = (1+α)/(1−α) and α = 0.01, and every bin is
-- reported as 2γ^i/(γ+1), which is within α (1%) of any value in the bin.
-- Zero (and anything ≤ 0) has its own bin, -2147483648, which sorts before
-- every real bin so that rank walks stay in value order.
--
-- Histograms add bin by bin, so minute rows merge into hours and hours into
-- days without the error growing; percentiles are read from the merged
-- counts, never averaged. Bins are kept sorted ascending with no duplicates
-- and no zero counts. Latencies are whole milliseconds up to minutes, so a
-- histogram holds at most a few hundred bins (ln(600000)/ln(γ) ≈ 665).

-- +goose Up
CREATE TYPE apigee.latency_hist AS (
    bins   integer[],
    counts bigint[]
);
ALTER TYPE apigee.latency_hist OWNER TO apigee_owner;

-- SQL functions without STRICT so the planner can inline them into the
-- rollup queries (one function call per raw row would dominate).
-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_bin(v double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN v <= 0 THEN -2147483648
                ELSE ceil(ln(v) / ln(1.01::float8 / 0.99::float8))::integer END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_value(bin integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN bin = -2147483648 THEN 0::float8
                ELSE 2 * power(1.01::float8 / 0.99::float8, bin) / (1.01::float8 / 0.99::float8 + 1) END
$$;
-- +goose StatementEnd

-- latency_hist_of builds a histogram from raw values, for ad-hoc queries:
-- apigee.latency_hist_of(array_agg(total_response_time)).
-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_of(vals double precision[]) RETURNS apigee.latency_hist
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ROW(coalesce(array_agg(b ORDER BY b), '{}'), coalesce(array_agg(n ORDER BY b), '{}'))::apigee.latency_hist
    FROM (SELECT apigee.latency_hist_bin(v) AS b, count(*)::bigint AS n
          FROM unnest(vals) AS v WHERE v IS NOT NULL GROUP BY 1) s
$$;
-- +goose StatementEnd

-- latency_hist_add merges two histograms; NULL counts as empty.
-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_add(a apigee.latency_hist, b apigee.latency_hist) RETURNS apigee.latency_hist
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ROW(coalesce(array_agg(bin ORDER BY bin), '{}'), coalesce(array_agg(n ORDER BY bin), '{}'))::apigee.latency_hist
    FROM (SELECT bin, sum(n)::bigint AS n
          FROM (SELECT * FROM unnest((a).bins, (a).counts)
                UNION ALL
                SELECT * FROM unnest((b).bins, (b).counts)) u(bin, n)
          WHERE n > 0
          GROUP BY bin) s
$$;
-- +goose StatementEnd

-- latency_hist_merge(h) is the aggregate: the histogram of every row's
-- values together, e.g. a day from its hours.
CREATE AGGREGATE apigee.latency_hist_merge(apigee.latency_hist) (
    SFUNC = apigee.latency_hist_add,
    STYPE = apigee.latency_hist,
    COMBINEFUNC = apigee.latency_hist_add,
    PARALLEL = SAFE
);

-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_count(h apigee.latency_hist) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce((SELECT sum(c)::bigint FROM unnest((h).counts) c), 0)
$$;
-- +goose StatementEnd

-- latency_hist_quantile estimates percentile_cont(q) of the values counted
-- in h: the same rank position q·(n−1), interpolated between the two
-- neighbouring ranks, each read as its bin's representative value, so the
-- estimate is within α of percentile_cont's. NULL for an empty histogram.
-- +goose StatementBegin
CREATE FUNCTION apigee.latency_hist_quantile(h apigee.latency_hist, q double precision) RETURNS double precision
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

ALTER FUNCTION apigee.latency_hist_bin(double precision) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_value(integer) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_of(double precision[]) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_add(apigee.latency_hist, apigee.latency_hist) OWNER TO apigee_owner;
ALTER AGGREGATE apigee.latency_hist_merge(apigee.latency_hist) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_count(apigee.latency_hist) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_quantile(apigee.latency_hist, double precision) OWNER TO apigee_owner;

-- +goose Down
DROP FUNCTION IF EXISTS apigee.latency_hist_quantile(apigee.latency_hist, double precision);
DROP FUNCTION IF EXISTS apigee.latency_hist_count(apigee.latency_hist);
DROP AGGREGATE IF EXISTS apigee.latency_hist_merge(apigee.latency_hist);
DROP FUNCTION IF EXISTS apigee.latency_hist_add(apigee.latency_hist, apigee.latency_hist);
DROP FUNCTION IF EXISTS apigee.latency_hist_of(double precision[]);
DROP FUNCTION IF EXISTS apigee.latency_hist_value(integer);
DROP FUNCTION IF EXISTS apigee.latency_hist_bin(double precision);
DROP TYPE IF EXISTS apigee.latency_hist;
