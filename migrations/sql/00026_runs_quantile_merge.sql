-- Faster per-proxy percentile reads (issue 13): the walk of
-- apigee.latency_hist_runs_quantile (00022) for one or two runs.
--
-- The dashboard's p95 latency by proxy at a minute interval is ~4,000
-- groups (a proxy's minute: prod and test, two rows), and the walk was
-- most of its time (~17 µs of a group's ~25 µs; the scan, the hash
-- aggregate and the three array_cat_agg ~6 µs): each run was walked from
-- its end until it alone had passed the rank (the small test run usually
-- whole), its bins added into a dense array indexed by bin, and that array
-- walked again across the empty bins between the top and the answer.
-- PL/pgSQL pays ~50–70 ns per expression, so the cost was the number of
-- statements, not the arithmetic.
--
-- For one or two runs (every group of a panel at the rollup's own
-- interval) the walk now merges the two sorted runs from the end nearer q's
-- rank, consuming one run while its next bin is no nearer the other end
-- than the other run's, and stops at the rank: ~13 entries for p95 of a
-- minute of ~250 calls, three expressions each, no array written.
-- Three or more runs (a coarser interval over minute rows) keep 00022's
-- walk, whose cost per run does not grow with the number of runs.
--
-- The result is the same value, bit for bit: the walk meets the same
-- entries in the same order as a walk over the merged histogram (repeated
-- bins, within a run or across the two, are consecutive in merge order and
-- add up like one bin), reads the same two bins and interpolates with
-- 00022's expression. Same signature: the views, the dashboard and the
-- README's queries call it unchanged.

-- +goose Up
-- +goose StatementBegin
-- latency_hist_runs_quantile(b, c, lens, n, q): as in 00022.
CREATE OR REPLACE FUNCTION apigee.latency_hist_runs_quantile(b integer[], c bigint[], lens integer[], n bigint, q double precision) RETURNS double precision
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
    t2  bigint;
    cum bigint := 0;
    blo integer;
    bhi integer;
    i   integer;
    j   integer;
    m   integer;
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
    IF k <= 2 THEN
        -- Runs [1, m) and [m, e]; lens NULL or of one run: the second is empty.
        e := cardinality(b);
        m := CASE WHEN k = 2 THEN lens[1] + 1 ELSE e + 1 END;
        -- cum counts from the walking end; t is the count at which the next
        -- of the two ranks is reached (from the top: rank hi at n − hi,
        -- rank lo at n − lo; from the bottom: lo at lo + 1, hi at hi + 1),
        -- and x the bin that reached it.
        IF up THEN
            t := n - hi;
            t2 := n - lo;
            i := m - 1;
            j := e;
        ELSE
            t := lo + 1;
            t2 := hi + 1;
            i := 1;
            j := m;
        END IF;
        -- One run (or an empty one of two): two expressions a bin.
        IF m = 1 OR m > e THEN
            IF up THEN
                FOR i IN REVERSE e .. 1 LOOP
                    cum := cum + c[i];
                    CONTINUE WHEN cum < t;
                    IF bhi IS NULL THEN
                        bhi := b[i];
                        t := t2;
                        CONTINUE WHEN cum < t;
                    END IF;
                    blo := b[i];
                    EXIT;
                END LOOP;
            ELSE
                FOR i IN 1 .. e LOOP
                    cum := cum + c[i];
                    CONTINUE WHEN cum < t;
                    IF blo IS NULL THEN
                        blo := b[i];
                        t := t2;
                        CONTINUE WHEN cum < t;
                    END IF;
                    bhi := b[i];
                    EXIT;
                END LOOP;
            END IF;
        ELSE
            -- Two runs: the one whose next bin is farther from the walk's
            -- start (ties: the first) until the other's is, then the other.
            LOOP
                IF up THEN
                    WHILE cum < t AND i >= 1 AND (j < m OR b[i] >= b[j]) LOOP
                        cum := cum + c[i]; i := i - 1;
                    END LOOP;
                    IF cum >= t THEN
                        x := b[i + 1];
                    ELSE
                        WHILE cum < t AND j >= m AND (i < 1 OR b[j] > b[i]) LOOP
                            cum := cum + c[j]; j := j - 1;
                        END LOOP;
                        CONTINUE WHEN cum < t AND (i >= 1 OR j >= m);
                        EXIT WHEN cum < t;
                        x := b[j + 1];
                    END IF;
                ELSE
                    WHILE cum < t AND i < m AND (j > e OR b[i] <= b[j]) LOOP
                        cum := cum + c[i]; i := i + 1;
                    END LOOP;
                    IF cum >= t THEN
                        x := b[i - 1];
                    ELSE
                        WHILE cum < t AND j <= e AND (i >= m OR b[j] < b[i]) LOOP
                            cum := cum + c[j]; j := j + 1;
                        END LOOP;
                        CONTINUE WHEN cum < t AND (i < m OR j <= e);
                        EXIT WHEN cum < t;
                        x := b[j - 1];
                    END IF;
                END IF;
                -- The first rank reached: from the top it is hi, from the bottom lo.
                IF t < t2 THEN
                    IF up THEN bhi := x; ELSE blo := x; END IF;
                    t := t2;
                    CONTINUE WHEN cum < t;
                END IF;
                IF up THEN
                    blo := x;
                    bhi := coalesce(bhi, x);
                ELSE
                    bhi := x;
                    blo := coalesce(blo, x);
                END IF;
                EXIT;
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

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION apigee.latency_hist_runs_quantile(b integer[], c bigint[], lens integer[], n bigint, q double precision) RETURNS double precision
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
