package rollup

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// skewedCalls returns one hour's worth of rows (10 busy minutes) for two
// proxies: "lognormal" (heavy right tail, a few zeros) and "bimodal" (70%
// fast cache hits, 30% slow backend calls).
func skewedCalls(rng *rand.Rand, hour time.Time) []call {
	var out []call
	for m := 0; m < 10; m++ {
		for i := 0; i < 600; i++ {
			at := hour.Add(time.Duration(m*5)*time.Minute + time.Duration(rng.IntN(60_000))*time.Millisecond)
			total := lognormal(rng, 120, 0.9)
			if rng.IntN(50) == 0 {
				total = 0
			}
			out = append(out, call{at: at, tenant: "tenant-a", proxy: "lognormal", status: 200,
				total: ptr(total), target: ptr(lognormal(rng, 60, 1.1))})

			var t2, g2 int32
			if rng.IntN(10) < 7 {
				t2, g2 = lognormal(rng, 15, 0.3), lognormal(rng, 5, 0.3)
			} else {
				t2, g2 = lognormal(rng, 900, 0.25), lognormal(rng, 850, 0.25)
			}
			out = append(out, call{at: at, tenant: "tenant-a", proxy: "bimodal", status: 200,
				verb: []string{"GET", "POST"}[rng.IntN(2)], total: ptr(t2), target: ptr(g2)})
		}
	}
	return out
}

// TestPercentileAccuracy compares the views' percentiles (from merged
// minute and hour histograms) with percentile_cont over the raw rows.
func TestPercentileAccuracy(t *testing.T) {
	t.Parallel()
	const maxRelErr = 0.02
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		hour := time.Now().UTC().Add(-5 * time.Hour).Truncate(time.Hour)
		insertCalls(t, db, skewedCalls(rand.New(rand.NewPCG(11, 12)), hour))
		mustRun(t, newTestRunner(t, db, testConfig(), nil))

		cases := []struct {
			name, view, width string
		}{
			// The views read the narrow per-proxy rollups (00019).
			{"minute summaries", "apigee.proxy_latency_1m", "1 minute"},
			{"hours merged from minutes", "apigee.proxy_latency_1h", "1 hour"},
			{"days merged from hours", "apigee.proxy_latency_1d", "1 day"},
			// The wide rollups merged per proxy, as app and product panels do.
			{"wide minutes merged per proxy", wideLatency("bucket_start", "api_calls_1m"), "1 minute"},
			{"wide hours merged per proxy", wideLatency("bucket_start", "api_calls_1h"), "1 hour"},
			{"wide days merged from hours", wideLatency("date_trunc('day', bucket_start, 'UTC')", "api_calls_1h"), "1 day"},
			// The dashboard's per-proxy walk (00022): a group's histograms end
			// to end, never merged; the wide minute rows repeat bins.
			{"minutes walked end to end per hour", runsLatency("proxy_calls_1m"), "1 hour"},
			{"wide minutes walked end to end per hour", runsLatency("api_calls_1m"), "1 hour"},
			// Whole hours from hour rows, the rest from minute rows (00022).
			{"a day of hours and minutes between", betweenLatency, "1 day"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				rows, err := db.Admin.Query(ctx, `
					WITH raw AS (
						SELECT apiproxy, date_bin('`+c.width+`', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
							percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_response_time) AS t,
							percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY target_response_time) AS g
						FROM apigee.api_calls GROUP BY 1, 2)
					SELECT raw.apiproxy, raw.b, raw.t, raw.g,
						ARRAY[v.total_ms_p50, v.total_ms_p90, v.total_ms_p95, v.total_ms_p99],
						ARRAY[v.target_ms_p50, v.target_ms_p90, v.target_ms_p95, v.target_ms_p99]
					FROM raw LEFT JOIN `+c.view+` v ON v.apiproxy = raw.apiproxy AND v.bucket_start = raw.b`)
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				n, worst := 0, 0.0
				for rows.Next() {
					var proxy string
					var b time.Time
					var rawT, rawG, gotT, gotG []*float64
					if err := rows.Scan(&proxy, &b, &rawT, &rawG, &gotT, &gotG); err != nil {
						t.Fatal(err)
					}
					n++
					for i, q := range []string{"p50", "p90", "p95", "p99"} {
						for _, pair := range []struct {
							what      string
							want, got *float64
						}{{"total", rawT[i], gotT[i]}, {"target", rawG[i], gotG[i]}} {
							if pair.got == nil {
								t.Fatalf("%s %s %s %s: no value in %s", proxy, b, pair.what, q, c.view)
							}
							rel := math.Abs(*pair.got-*pair.want) / *pair.want
							worst = math.Max(worst, rel)
							if rel > maxRelErr {
								t.Errorf("%s %s %s %s: %s says %.2f, percentile_cont %.2f (%.2f%% off)",
									proxy, b.Format(time.RFC3339), pair.what, q, c.view, *pair.got, *pair.want, 100*rel)
							}
						}
					}
				}
				if rows.Err() != nil {
					t.Fatal(rows.Err())
				}
				want := map[string]int{"1 minute": 20, "1 hour": 2, "1 day": 2}[c.width]
				if n != want {
					t.Fatalf("compared %d buckets, want %d", n, want)
				}
				t.Logf("%s: worst relative error %.3f%% over %d buckets", c.view, 100*worst, n)
			})
		}
	})
}

// wideLatency is a relation like proxy_latency_1m's percentile columns,
// merged per proxy from a wide (8-dimension) rollup table.
func wideLatency(bucket, table string) string {
	q := func(h, p string) string { return fmt.Sprintf("apigee.latency_hist_quantile(%s, %s)", h, p) }
	return fmt.Sprintf(`(SELECT b AS bucket_start, apiproxy,
		%s AS total_ms_p50, %s AS total_ms_p90, %s AS total_ms_p95, %s AS total_ms_p99,
		%s AS target_ms_p50, %s AS target_ms_p90, %s AS target_ms_p95, %s AS target_ms_p99
	FROM (SELECT %s AS b, apiproxy, apigee.latency_hist_merge(total_ms_hist) AS th, apigee.latency_hist_merge(target_ms_hist) AS gh
		FROM apigee.%s GROUP BY 1, 2) s)`,
		q("th", "0.50"), q("th", "0.90"), q("th", "0.95"), q("th", "0.99"),
		q("gh", "0.50"), q("gh", "0.90"), q("gh", "0.95"), q("gh", "0.99"), bucket, table)
}

// runsLatency is like wideLatency, per proxy and hour, with
// apigee.latency_hist_runs_quantile over a group's minute histograms laid
// end to end, as the dashboard's p95 latency by proxy reads them.
func runsLatency(table string) string {
	q := func(col, p string) string {
		return fmt.Sprintf(`apigee.latency_hist_runs_quantile(apigee.array_cat_agg((%[1]s_hist).bins), apigee.array_cat_agg((%[1]s_hist).counts),
			apigee.array_cat_agg(ARRAY[cardinality((%[1]s_hist).bins)]), sum(%[1]s_count)::bigint, %[2]s)`, col, p)
	}
	return fmt.Sprintf(`(SELECT date_bin('1 hour', bucket_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start, apiproxy,
		%s AS total_ms_p50, %s AS total_ms_p90, %s AS total_ms_p95, %s AS total_ms_p99,
		%s AS target_ms_p50, %s AS target_ms_p90, %s AS target_ms_p95, %s AS target_ms_p99
	FROM apigee.%s GROUP BY 1, 2)`,
		q("total_ms", "0.50"), q("total_ms", "0.90"), q("total_ms", "0.95"), q("total_ms", "0.99"),
		q("target_ms", "0.50"), q("target_ms", "0.90"), q("target_ms", "0.95"), q("target_ms", "0.99"), table)
}

// betweenLatency is per proxy and UTC day from apigee.proxy_calls_between
// over the day, as the dashboard's Latency by proxy reads a range.
var betweenLatency = `(SELECT d.d AS bucket_start, apiproxy,
		apigee.latency_hist_quantile(th, 0.50) AS total_ms_p50, apigee.latency_hist_quantile(th, 0.90) AS total_ms_p90,
		apigee.latency_hist_quantile(th, 0.95) AS total_ms_p95, apigee.latency_hist_quantile(th, 0.99) AS total_ms_p99,
		apigee.latency_hist_quantile(gh, 0.50) AS target_ms_p50, apigee.latency_hist_quantile(gh, 0.90) AS target_ms_p90,
		apigee.latency_hist_quantile(gh, 0.95) AS target_ms_p95, apigee.latency_hist_quantile(gh, 0.99) AS target_ms_p99
	FROM (SELECT DISTINCT date_trunc('day', bucket_start, 'UTC') AS d FROM apigee.proxy_calls_1m) d,
	LATERAL (SELECT apiproxy, apigee.latency_hist_merge(total_ms_hist) AS th, apigee.latency_hist_merge(target_ms_hist) AS gh
		FROM apigee.proxy_calls_between(d.d, d.d + interval '1 day' - interval '1 minute') GROUP BY 1) s)`

// TestLatencyHistFunctions checks the SQL summary functions directly.
func TestLatencyHistFunctions(t *testing.T) {
	t.Parallel()
	db := testkit.New(t, testkit.Postgres)
	ctx := context.Background()
	cases := []struct {
		name string
		sql  string
		want float64
	}{
		{"single value", "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{250}'), 0.5)", 250},
		{"zero bin", "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{0,0,0,10}'), 0.5)", 0},
		{"interpolates like percentile_cont", "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{100,200}'), 0.5)", 150},
		{"min and max", "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{3,7,1000}'), 1)", 1000},
		{"sub-millisecond values", "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{0.25}'), 0.5)", 0.25},
		{"count ignores NULLs", "SELECT apigee.latency_hist_count(apigee.latency_hist_of('{1,NULL,3,0}'))", 3},
		{"merge equals the histogram of the union",
			`SELECT count(*) FROM (SELECT apigee.latency_hist_add(apigee.latency_hist_of('{1,5,5,900}'), apigee.latency_hist_of('{0,5,70}')) AS a,
				apigee.latency_hist_of('{1,5,5,900,0,5,70}') AS b) s WHERE a = b`, 1},
		{"run-length encoding of sorted bins", `SELECT count(*) FROM (SELECT apigee.latency_hist_rle(ARRAY[-2147483648, 3, 3, 7, 7, 7]) AS h) s
				WHERE (h).bins = '{-2147483648,3,7}' AND (h).counts = '{1,2,3}'`, 1},
		{"repeated bins count like one", `SELECT apigee.latency_hist_quantile(ROW('{5,5,5,9}', '{1,1,1,1}')::apigee.latency_hist, 0.5)
				- apigee.latency_hist_quantile(ROW('{5,9}', '{3,1}')::apigee.latency_hist, 0.5) + 1`, 1},
		{"aggregate merge compacts repeated bins", `SELECT count(*) FROM (SELECT apigee.latency_hist_merge(h) AS m FROM (VALUES
				(ROW('{1,1,4}', '{1,1,1}')::apigee.latency_hist), (apigee.latency_hist_rle('{1,2}')), (ROW('{4,4}', '{1,1}')::apigee.latency_hist)) v(h)) s
				WHERE (m).bins = '{1,2,4}' AND (m).counts = '{3,1,3}'`, 1},
		{"aggregate merge past the compaction threshold", `SELECT apigee.latency_hist_count(apigee.latency_hist_merge(apigee.latency_hist_of(ARRAY[g, g + 1, g * 7]::float8[])))
				FROM generate_series(1, 3000) g`, 9000},
		{"aggregate merge", `SELECT apigee.latency_hist_count(apigee.latency_hist_merge(h)) FROM (VALUES
				(apigee.latency_hist_of('{1,2}')), (NULL), (apigee.latency_hist_of('{}')), (apigee.latency_hist_of('{3,4,5}'))) v(h)`, 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got float64
			if err := db.Admin.QueryRow(ctx, c.sql).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if c.want == 0 && got != 0 || math.Abs(got-c.want) > 0.01*math.Abs(c.want) {
				t.Fatalf("got %v, want %v within 1%%", got, c.want)
			}
		})
	}
	t.Run("empty histogram has no percentile", func(t *testing.T) {
		var got *float64
		if err := db.Admin.QueryRow(ctx, "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{}'), 0.5)").Scan(&got); err != nil || got != nil {
			t.Fatalf("got %v (err %v), want NULL", got, err)
		}
	})
	t.Run("q outside [0, 1] is refused", func(t *testing.T) {
		var got *float64
		if err := db.Admin.QueryRow(ctx, "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of('{1}'), 1.5)").Scan(&got); err == nil {
			t.Fatalf("got %v, want an error", got)
		}
	})
	t.Run("every value within 1% of its bin's representative", func(t *testing.T) {
		var worst float64
		err := db.Admin.QueryRow(ctx, `SELECT max(abs(apigee.latency_hist_value(apigee.latency_hist_bin(v)) - v) / v)
			FROM (SELECT generate_series(1, 600000) * 1.0 AS v UNION ALL SELECT 0.001 * generate_series(1, 1000)) s`).Scan(&worst)
		if err != nil {
			t.Fatal(err)
		}
		if worst > 0.01 {
			t.Fatalf("worst relative error %.5f, want ≤ 0.01", worst)
		}
	})
}
