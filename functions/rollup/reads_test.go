package rollup

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// TestLatencyHistRunsQuantile checks the quantile walks of 00022 and 00026 against
// percentile_cont over each value's bin representative, which is what a
// histogram quantile is: random groups of 1–12 runs, some empty, some in
// the minute rows' form (one entry per call, bins repeated), with zeros
// and sub-millisecond values.
func TestLatencyHistRunsQuantile(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		conn := db.AdminConn(t)
		for _, sql := range []string{
			"SELECT setseed(0.25)",
			`CREATE TEMP TABLE vals AS
			 SELECT g, j, CASE WHEN random() < 0.05 THEN 0
			                   WHEN random() < 0.05 THEN random()
			                   ELSE round(exp(ln(100) + 0.8 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))) END AS v
			 FROM generate_series(1, 400) g, generate_series(1, 1 + g % 12) j, LATERAL generate_series(1, (random() * 40)::int + j - j) i`,
			`CREATE TEMP TABLE runs AS
			 SELECT g, j, CASE WHEN j % 3 = 0
			                   THEN (SELECT ROW(coalesce(array_agg(b ORDER BY b), '{}'), coalesce(array_agg(1::bigint ORDER BY b), '{}'))::apigee.latency_hist
			                         FROM (SELECT apigee.latency_hist_bin(v) AS b FROM vals x WHERE x.g = s.g AND x.j = s.j) y)
			                   ELSE (SELECT apigee.latency_hist_of(array_agg(v)) FROM vals x WHERE x.g = s.g AND x.j = s.j) END AS h
			 FROM (SELECT DISTINCT g, j FROM generate_series(1, 400) g, generate_series(1, 1 + g % 12) j) s`,
		} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%v\n%s", err, sql)
			}
		}
		var groups, compared, bad int
		err := conn.QueryRow(ctx, `
			WITH grp AS (
				SELECT g, apigee.array_cat_agg((h).bins ORDER BY j) AS b, apigee.array_cat_agg((h).counts ORDER BY j) AS c,
				       apigee.array_cat_agg(ARRAY[cardinality((h).bins)] ORDER BY j) AS l,
				       sum(apigee.latency_hist_count(h))::bigint AS n, apigee.latency_hist_merge(h) AS m
				FROM runs GROUP BY g),
			want AS (
				SELECT g, q, percentile_cont(q) WITHIN GROUP (ORDER BY apigee.latency_hist_value(apigee.latency_hist_bin(v))) AS p
				FROM vals, unnest('{0, 0.01, 0.3, 0.5, 0.9, 0.95, 0.99, 1}'::float8[]) q GROUP BY g, q),
			got AS (
				SELECT grp.g, w.q, w.p, apigee.latency_hist_runs_quantile(b, c, l, n, w.q) AS runs,
				       apigee.latency_hist_quantile(m, w.q) AS merged,
				       CASE WHEN cardinality(l) = 1 THEN apigee.latency_hist_runs_quantile(b, c, NULL, n, w.q) ELSE w.p END AS one
				FROM grp JOIN want w USING (g))
			SELECT (SELECT count(*) FROM grp), count(*),
			       count(*) FILTER (WHERE NOT (abs(runs - p) <= 1e-9 * greatest(p, 1) AND abs(merged - p) <= 1e-9 * greatest(p, 1)
			                                   AND abs(one - p) <= 1e-9 * greatest(p, 1)))
			FROM got`).Scan(&groups, &compared, &bad)
		if err != nil {
			t.Fatal(err)
		}
		if groups != 400 || compared < 2000 || bad != 0 {
			t.Fatalf("%d groups, %d quantiles compared, %d differ from percentile_cont of the bins' values", groups, compared, bad)
		}

		for _, c := range []struct {
			name, sql string
		}{
			{"no values", "SELECT apigee.latency_hist_runs_quantile('{}', '{}', NULL, 0, 0.5)"},
			{"rank past the values", "SELECT apigee.latency_hist_runs_quantile('{1,5}', '{1,1}', NULL, 10, 0.4)"},
			{"rank past the values of the runs", "SELECT apigee.latency_hist_runs_quantile('{1,5,2}', '{1,1,1}', '{2,1}', 10, 0.45)"},
			{"rank past the values of two runs, from the top", "SELECT apigee.latency_hist_runs_quantile('{1,5,2}', '{1,1,1}', '{2,1}', 10, 0.6)"},
			{"rank past the values of three runs", "SELECT apigee.latency_hist_runs_quantile('{1,5,2,3}', '{1,1,1,1}', '{2,1,1}', 10, 0.5)"},
			{"rank past the values, from the top", "SELECT apigee.latency_hist_runs_quantile('{1,5}', '{1,1}', NULL, 10, 0.6)"},
			{"NULL n", "SELECT apigee.latency_hist_runs_quantile('{1,5}', '{1,1}', NULL, NULL, 0.5)"},
		} {
			t.Run(c.name, func(t *testing.T) {
				var got *float64
				if err := conn.QueryRow(ctx, c.sql).Scan(&got); err != nil || got != nil {
					t.Fatalf("got %v (err %v), want NULL", got, err)
				}
			})
		}
		t.Run("q outside [0, 1] is refused", func(t *testing.T) {
			var got *float64
			if err := conn.QueryRow(ctx, "SELECT apigee.latency_hist_runs_quantile('{1}', '{1}', NULL, 1, -0.5)").Scan(&got); err == nil {
				t.Fatalf("got %v, want an error", got)
			}
		})
	})
}

// TestProxyCallsBetween checks that apigee.proxy_calls_between covers
// every minute of a range once, from hour rows for its whole hours: the
// same calls and the same merged histograms as the minute rows over many
// ranges, whole and ragged, and only hour rows for a whole hour.
func TestProxyCallsBetween(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		start := time.Now().UTC().Add(-6 * time.Hour).Truncate(time.Hour)
		rng := rand.New(rand.NewPCG(3, 4))
		var calls []call
		for i := range 3000 {
			at := start.Add(time.Duration(rng.IntN(3*3600)) * time.Second)
			calls = append(calls, call{at: at, tenant: "tenant-a", proxy: []string{"a", "b", "c"}[i%3],
				app: ptr([]string{"app-x", "app-y", "app-z"}[(i/3)%3]),
				env: []string{"prod", "test"}[rng.IntN(2)], status: 200, total: ptr(lognormal(rng, 80, 0.7)), target: ptr(lognormal(rng, 40, 0.7))})
		}
		insertCalls(t, db, calls)
		mustRun(t, newTestRunner(t, db, testConfig(), nil))

		// The per-app rollups' app_calls_between (00024) is the same function.
		for _, rollup := range []string{"proxy", "app"} {
			t.Run(rollup, func(t *testing.T) {
				var windows, bad int
				err := db.Admin.QueryRow(ctx, strings.ReplaceAll(`
			WITH w AS (
				SELECT $1::timestamptz - interval '20 minutes' + s * interval '7 minutes 13 seconds' AS t0, d
				FROM generate_series(0, 30) s, unnest(ARRAY[interval '0', '59 minutes', '1 hour', '1 hour 1 minute', '2 hours 30 seconds', '4 hours']) d),
			c AS (
				SELECT (SELECT row(sum(calls), apigee.latency_hist_merge(total_ms_hist), apigee.latency_hist_merge(target_ms_hist))::text
				        FROM apigee.ROLLUP_calls_between(t0, t0 + d)) AS got,
				       (SELECT row(sum(calls), apigee.latency_hist_merge(total_ms_hist), apigee.latency_hist_merge(target_ms_hist))::text
				        FROM apigee.ROLLUP_calls_1m WHERE bucket_start BETWEEN t0 AND t0 + d) AS want
				FROM w)
			SELECT count(*), count(*) FILTER (WHERE got IS DISTINCT FROM want) FROM c`, "ROLLUP", rollup), start).Scan(&windows, &bad)
				if err != nil {
					t.Fatal(err)
				}
				if windows != 31*6 || bad != 0 {
					t.Fatalf("%d of %d ranges differ from the minute rows", bad, windows)
				}
				hour := start.Add(time.Hour)
				got := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+rollup+"_calls_between($1::timestamptz, $1::timestamptz + interval '59 minutes')", hour)
				want := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+rollup+"_calls_1h WHERE bucket_start = $1", hour)
				if got != want || want != 6 {
					t.Fatalf("a whole hour read %d rows, want its %d hour rows (6: 3 proxies or apps × 2 environments)", got, want)
				}
			})
		}
	})
}

// TestRollupHistogramCounts checks what latency_hist_runs_quantile relies
// on: every rollup row's histogram counts exactly its *_ms_count calls.
func TestRollupHistogramCounts(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		hour := time.Now().UTC().Add(-5 * time.Hour).Truncate(time.Hour)
		calls := skewedCalls(rand.New(rand.NewPCG(5, 6)), hour)
		for i := range 200 {
			calls = append(calls, call{at: hour.Add(time.Duration(i) * 17 * time.Second), tenant: "tenant-a", proxy: "sparse", status: 200,
				total: map[bool]*int32{true: ptr(int32(i))}[i%3 != 0], target: map[bool]*int32{true: ptr(int32(i))}[i%4 != 0]})
		}
		insertCalls(t, db, calls)
		mustRun(t, newTestRunner(t, db, testConfig(), nil))
		for _, table := range []string{"api_calls_1m", "api_calls_1h", "proxy_calls_1m", "proxy_calls_1h", "app_calls_1m", "app_calls_1h"} {
			rows := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+table)
			bad := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+table+
				" WHERE total_ms_count <> apigee.latency_hist_count(total_ms_hist) OR target_ms_count <> apigee.latency_hist_count(target_ms_hist)")
			if rows == 0 || bad != 0 {
				t.Errorf("%s: %d of %d rows count other calls than their histograms", table, bad, rows)
			}
		}
	})
}

// TestLatencyHistRunsQuantileMerged checks that the walk of 00026 gives
// latency_hist_quantile's value over the merged histogram bit for bit
// (not within a tolerance): groups of one, two and three runs (the merge,
// the single walk and 00022's walk), runs empty, in both stored forms
// (repeated bins or counted), sharing bins with each other (values drawn
// from a few milliseconds, so ties across runs are the rule), with zeros,
// at quantiles near both ends and random ones; single runs also with lens
// NULL, as the views call it.
func TestLatencyHistRunsQuantileMerged(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		conn := db.AdminConn(t)
		for _, sql := range []string{
			"SELECT setseed(0.75)",
			// Group g has 1 + g % 3 runs; a fifth of the groups draw from 1–4 ms.
			`CREATE TEMP TABLE vals AS
			 SELECT g, j, CASE WHEN random() < 0.03 THEN 0
			                   WHEN g % 5 = 0 THEN 1 + floor(random() * 4)
			                   ELSE round(exp(ln(100) + 0.8 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))) END AS v
			 FROM generate_series(1, 900) g, generate_series(1, 1 + g % 3) j,
			      LATERAL generate_series(1, CASE WHEN (g + j) % 11 = 0 THEN 0 ELSE (random() * 300)::int END + j - j) i`,
			`CREATE TEMP TABLE runs AS
			 SELECT s.g, s.j, CASE WHEN x.g IS NULL THEN ROW('{}', '{}')::apigee.latency_hist
			                       WHEN (s.g + s.j) % 2 = 0 THEN ROW(x.bins, x.ones)::apigee.latency_hist ELSE x.h END AS h
			 FROM (SELECT g, j FROM generate_series(1, 900) g, generate_series(1, 1 + g % 3) j) s
			 LEFT JOIN (SELECT g, j, array_agg(apigee.latency_hist_bin(v) ORDER BY apigee.latency_hist_bin(v)) AS bins,
			                   array_agg(1::bigint) AS ones, apigee.latency_hist_of(array_agg(v)) AS h
			            FROM vals GROUP BY g, j) x ON x.g = s.g AND x.j = s.j`,
		} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%v\n%s", err, sql)
			}
		}
		rows, err := conn.Query(ctx, `
			WITH grp AS (
				SELECT g, apigee.array_cat_agg((h).bins ORDER BY j) AS b, apigee.array_cat_agg((h).counts ORDER BY j) AS c,
				       apigee.array_cat_agg(ARRAY[cardinality((h).bins)] ORDER BY j) AS l,
				       sum(apigee.latency_hist_count(h))::bigint AS n, apigee.latency_hist_merge(h) AS m
				FROM runs GROUP BY g),
			qs AS (
				SELECT unnest('{0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.3, 0.49, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}'::float8[]) AS q
				UNION ALL SELECT random() FROM generate_series(1, 10)),
			got AS (
				SELECT cardinality(l) AS k, n, apigee.latency_hist_quantile(m, q) AS want,
				       apigee.latency_hist_runs_quantile(b, c, l, n, q) AS runs,
				       apigee.latency_hist_runs_quantile(b, c, CASE WHEN cardinality(l) = 1 THEN NULL ELSE l END, n, q) AS unlabelled
				FROM grp, qs)
			SELECT k, count(*), count(*) FILTER (WHERE n > 0 AND want IS NOT NULL),
			       count(*) FILTER (WHERE runs IS DISTINCT FROM want OR unlabelled IS DISTINCT FROM want)
			FROM got GROUP BY k ORDER BY k`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		seen := 0
		for rows.Next() {
			var k, compared, valued, bad int
			if err := rows.Scan(&k, &compared, &valued, &bad); err != nil {
				t.Fatal(err)
			}
			seen++
			if valued < 5000 || bad != 0 {
				t.Errorf("%d runs: %d of %d quantiles (%d with a value) differ from latency_hist_quantile of the merged histogram", k, bad, compared, valued)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if seen != 3 {
			t.Fatalf("groups of %d run counts, want 1, 2 and 3", seen)
		}
	})
}
