package rollup

import (
	"context"
	"fmt"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// BenchmarkRollup measures, side by side on each database kind:
//
//   - spread: a full rebuild of the rollups over 1,000,000 raw rows (30
//     days), the incremental refresh after 1% more rows arrive, and
//     retention dropping the 30 daily raw chunks — also on a database with
//     300 times fewer rows, to show the drop does not depend on row count;
//   - density=N: 1,000,000 raw rows at N rows per minute (40 proxies × 50
//     apps): the full refresh (minutes and hours) against a plain
//     CREATE TABLE AS … GROUP BY per minute with percentile_cont (the
//     ratio rollup ÷ plain, as speed), then every Grafana panel query and
//     the README's p95-per-proxy query over 1 h and 24 h windows from the
//     rollups and the same question from raw rows (bench_reads_test.go).
//
// Run it once, ending with the table of every ratio against its target:
//
//	go test -run '^$' -bench BenchmarkRollup -benchtime 1x -timeout 90m ./functions/rollup/
func BenchmarkRollup(b *testing.B) {
	var results []densityResult
	for _, kind := range testkit.Kinds {
		b.Run(string(kind), func(b *testing.B) {
			b.Run("spread", func(b *testing.B) {
				for range b.N {
					benchScenario(b, kind)
				}
			})
			for _, perMinute := range benchDensities {
				b.Run(fmt.Sprintf("density=%d", perMinute), func(b *testing.B) {
					for range b.N {
						results = append(results, benchDensity(b, kind, perMinute))
					}
				})
			}
		})
	}
	printTargets(b, results)
}

const (
	benchRows = 1_000_000
	benchDays = 30
)

// benchInsertSQL writes $3 rows spread evenly from $1, $2 seconds apart,
// over $5 proxies and $6 apps, with traffic skewed towards a few proxies,
// apps and statuses and
// lognormal latencies (median 100 ms), plus one invalidation per minute.
const benchInsertSQL = `
WITH ins AS (
	INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy, request_verb, request_path,
		response_status_code, total_response_time, target_response_time, api_product, developer_app, request_size, response_size, batch_id)
	SELECT $1::timestamptz + (i * $2::float8) * interval '1 second', $4 || i, 'tenant-' || (p % 3), 'org',
		CASE WHEN random() < 0.9 THEN 'prod' ELSE 'test' END, 'proxy-' || p,
		CASE WHEN random() < 0.75 THEN 'GET' ELSE 'POST' END, '/x',
		CASE WHEN r < 0.85 THEN 200 WHEN r < 0.93 THEN 404 WHEN r < 0.98 THEN 500 ELSE 503 END,
		lat, (lat * 0.7)::integer, 'product-' || (a % 2), 'app-' || a,
		(100 + random() * 900)::bigint, (1000 + random() * 9000)::bigint, 1
	FROM (
		SELECT i, random() AS r, floor($5::integer * random() ^ 3)::integer AS p, floor($6::integer * random() ^ 2)::integer AS a,
			round(exp(ln(100) + 0.6 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())))::integer AS lat
		FROM generate_series(0, $3::integer - 1) i
	) s
	RETURNING received_at
)
INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
SELECT DISTINCT 1, date_bin('1 minute', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') FROM ins`

// benchShape is the traffic's spread: how many proxies and apps.
type benchShape struct{ proxies, apps int }

var (
	// spreadShape is the 30-day scenario's (issue 5).
	spreadShape = benchShape{proxies: 8, apps: 5}
	// denseShape is production density's (issue 13): 40 proxies × 50 apps.
	denseShape = benchShape{proxies: 40, apps: 50}
)

func benchLoad(b *testing.B, db *testkit.DB, from time.Time, rows int, spacing float64, prefix string, shape benchShape) {
	b.Helper()
	ctx := context.Background()
	if _, err := db.Admin.Exec(ctx, "SELECT apigee.ensure_partitions($1::date, $2::date)",
		from.Format(time.DateOnly), from.Add(time.Duration(float64(rows)*spacing)*time.Second).Format(time.DateOnly)); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Admin.Exec(ctx, "SELECT setseed(0.42)"); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Admin.Exec(ctx, benchInsertSQL, from, spacing, rows, prefix, shape.proxies, shape.apps); err != nil {
		b.Fatalf("load: %v", err)
	}
	if _, err := db.Admin.Exec(ctx, "ANALYZE apigee.api_calls; ANALYZE apigee.rollup_invalidations"); err != nil {
		b.Fatal(err)
	}
}

// benchRetention times dropping the 30 daily raw chunks before cutoff.
func benchRetention(b *testing.B, db *testkit.DB, keep time.Duration) time.Duration {
	b.Helper()
	conn := testkit.Connect(b, mustDSN(b, db))
	t0 := time.Now()
	n := queryInt(b, conn, "SELECT count(*) FROM apigee.apply_retention('raw', $1::interval) WHERE outcome = 'dropped'", interval(keep))
	d := time.Since(t0)
	if n != benchDays {
		b.Fatalf("retention dropped %d chunks, want %d", n, benchDays)
	}
	return d
}

func benchScenario(b *testing.B, kind testkit.Kind) {
	b.StopTimer()
	db := testkit.New(b, kind)
	now := time.Now().UTC()
	start := now.Truncate(day).AddDate(0, 0, -40)
	spacing := float64(benchDays*24*3600) / benchRows

	t0 := time.Now()
	benchLoad(b, db, start, benchRows, spacing, "m", spreadShape)
	load := time.Since(t0)

	cfg := testConfig()
	cfg.RunBudget = time.Hour
	cfg.RawRetention, cfg.RejectsRetention, cfg.Rollup1mRetention, cfg.Rollup1hRetention = Off, Off, Off, Off
	r := newTestRunner(b, db, cfg, nil)

	b.StartTimer()
	t0 = time.Now()
	full := runUntilDone(b, r)
	fullDur := time.Since(t0)

	// 1% more rows, arriving after the others at the same rate.
	b.StopTimer()
	benchLoad(b, db, start.AddDate(0, 0, benchDays), benchRows/100, spacing, "n", spreadShape)
	b.StartTimer()
	t0 = time.Now()
	incr := runUntilDone(b, r)
	incrDur := time.Since(t0)

	// Retention: all 30 full days expire; the day of the new rows stays.
	keep := now.Sub(start.AddDate(0, 0, benchDays).Add(12 * time.Hour))
	retBig := benchRetention(b, db, keep)
	b.StopTimer()

	small := testkit.New(b, kind)
	benchLoad(b, small, start, benchRows/300, spacing*300, "s", spreadShape)
	runUntilDone(b, newTestRunner(b, small, cfg, nil))
	b.StartTimer()
	retSmall := benchRetention(b, small, keep)
	b.StopTimer()

	sum := func(ss []Summary) (rows int64, minutes, runs int) {
		for _, s := range ss {
			rows += s.RowsRead
			minutes += s.MinutesRefreshed
		}
		return rows, minutes, len(ss)
	}
	fr, fm, fn := sum(full)
	ir, im, in := sum(incr)
	ratio := incrDur.Seconds() / fullDur.Seconds()
	b.ReportMetric(fullDur.Seconds(), "full_s")
	b.ReportMetric(incrDur.Seconds(), "incr_s")
	b.ReportMetric(100*ratio, "incr/full_%")
	b.ReportMetric(retBig.Seconds(), "retention30_s")
	b.ReportMetric(retSmall.Seconds(), "retention30_small_s")
	b.Log(fmt.Sprintf("%s: loaded %d raw rows over %d days in %v", kind, benchRows, benchDays, load.Round(time.Millisecond)) + "\n" +
		fmt.Sprintf("  full rebuild:        %8v  (%d rows, %d minutes, %d runs, %.0f rows/s)\n", fullDur.Round(time.Millisecond), fr, fm, fn, float64(fr)/fullDur.Seconds()) +
		fmt.Sprintf("  incremental (+1%%):   %8v  (%d rows, %d minutes, %d runs) = %.2f%% of full (target ≤ 5%%)\n", incrDur.Round(time.Millisecond), ir, im, in, 100*ratio) +
		fmt.Sprintf("  retention, 30 days:  %8v  with %d rows; %v with %d rows (ratio %.2f; target < 2 s)", retBig.Round(time.Millisecond), benchRows,
			retSmall.Round(time.Millisecond), benchRows/300, retBig.Seconds()/retSmall.Seconds()))
}
