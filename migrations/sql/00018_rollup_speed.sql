-- Cheaper latency histograms to build and to merge (issue 13).
--
-- The histogram's bins are still sorted ascending, but a bin may now repeat
-- (its counts add up): functions/rollup stores a minute row's bins as the
-- sorted list of its calls' bins, one count each, which costs one sort per
-- group like percentile_cont's instead of a grouping-sets pass per bin (a
-- minute row holds a few calls, so there is little to compact). Hour rows
-- are run-length encoded with latency_hist_rle. latency_hist_quantile's
-- rank walk, latency_hist_add and latency_hist_count read either form
-- unchanged, and so does the anomaly detector (it merges with GROUP BY bin).
--
-- latency_hist_merge, which the views (00012) and the dashboards call,
-- used latency_hist_add as its transition function: an SQL function that
-- unnested, grouped and re-aggregated the running state once per input
-- row, quadratic in the bins and about 77 µs per row at production
-- density. It now appends each row's arrays (latency_hist_cat, compacting
-- only when the state grows past 1024 entries) and compacts once at the
-- end (latency_hist_norm). Same result: a sorted histogram without repeats.
--
-- Existing rollup rows stay valid (sorted without repeats is a special
-- case of the new form); nothing is rebuilt.

-- +goose Up
-- +goose StatementBegin
-- latency_hist_rle counts runs of equal bins in a sorted array.
CREATE FUNCTION apigee.latency_hist_rle(b integer[]) RETURNS apigee.latency_hist
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ob  integer[] := '{}';
    oc  bigint[] := '{}';
    n   integer := 0;
    cur integer;
    c   bigint := 0;
    x   integer;
BEGIN
    IF b IS NULL THEN
        RETURN ROW(ob, oc)::apigee.latency_hist;
    END IF;
    FOREACH x IN ARRAY b LOOP
        IF c > 0 AND x = cur THEN
            c := c + 1;
        ELSE
            IF c > 0 THEN
                n := n + 1;
                ob[n] := cur;
                oc[n] := c;
            END IF;
            cur := x;
            c := 1;
        END IF;
    END LOOP;
    IF c > 0 THEN
        ob[n + 1] := cur;
        oc[n + 1] := c;
    END IF;
    RETURN ROW(ob, oc)::apigee.latency_hist;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- latency_hist_norm sorts a histogram's bins and adds the counts of
-- repeated bins; NULL counts as empty.
CREATE FUNCTION apigee.latency_hist_norm(h apigee.latency_hist) RETURNS apigee.latency_hist
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ROW(coalesce(array_agg(bin ORDER BY bin), '{}'), coalesce(array_agg(n ORDER BY bin), '{}'))::apigee.latency_hist
    FROM (SELECT bin, sum(n)::bigint AS n
          FROM unnest((h).bins, (h).counts) u(bin, n)
          WHERE n > 0
          GROUP BY bin) s
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- latency_hist_cat appends b's bins to a's (unsorted until compacted).
CREATE FUNCTION apigee.latency_hist_cat(a apigee.latency_hist, b apigee.latency_hist) RETURNS apigee.latency_hist
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r apigee.latency_hist;
BEGIN
    IF b.bins IS NULL OR cardinality(b.bins) = 0 THEN
        RETURN a;
    END IF;
    IF a.bins IS NULL THEN
        RETURN b;
    END IF;
    r := ROW(a.bins || b.bins, a.counts || b.counts);
    -- Bound the state (and the copying) by compacting now and then.
    IF cardinality(r.bins) > 1024 THEN
        r := apigee.latency_hist_norm(r);
    END IF;
    RETURN r;
END
$$;
-- +goose StatementEnd

CREATE OR REPLACE AGGREGATE apigee.latency_hist_merge(apigee.latency_hist) (
    SFUNC = apigee.latency_hist_cat,
    STYPE = apigee.latency_hist,
    FINALFUNC = apigee.latency_hist_norm,
    COMBINEFUNC = apigee.latency_hist_cat,
    PARALLEL = SAFE
);

ALTER FUNCTION apigee.latency_hist_rle(integer[]) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_norm(apigee.latency_hist) OWNER TO apigee_owner;
ALTER FUNCTION apigee.latency_hist_cat(apigee.latency_hist, apigee.latency_hist) OWNER TO apigee_owner;

-- +goose Down
CREATE OR REPLACE AGGREGATE apigee.latency_hist_merge(apigee.latency_hist) (
    SFUNC = apigee.latency_hist_add,
    STYPE = apigee.latency_hist,
    COMBINEFUNC = apigee.latency_hist_add,
    PARALLEL = SAFE
);
DROP FUNCTION IF EXISTS apigee.latency_hist_cat(apigee.latency_hist, apigee.latency_hist);
DROP FUNCTION IF EXISTS apigee.latency_hist_norm(apigee.latency_hist);
DROP FUNCTION IF EXISTS apigee.latency_hist_rle(integer[]);
