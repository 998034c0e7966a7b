package rollup

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// TestLatencyBinMatchesSQL checks latencyBin against
// apigee.latency_hist_bin on every latency up to 100,000 ms and on both
// sides of every bin edge up to the largest integer: both are step
// functions of ln(v), so agreeing next to every edge is agreeing
// everywhere.
func TestLatencyBinMatchesSQL(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		var vals []int32
		for v := int32(0); v <= 100_000; v++ {
			vals = append(vals, v)
		}
		base := 1.01 / 0.99
		for k := 0; ; k++ {
			edge := math.Pow(base, float64(k))
			if edge > math.MaxInt32-2 {
				break
			}
			for d := int64(-2); d <= 2; d++ {
				if v := int64(edge) + d; v > 100_000 && v <= math.MaxInt32 {
					vals = append(vals, int32(v))
				}
			}
		}
		vals = append(vals, math.MaxInt32)
		rows, err := db.Admin.Query(ctx, "SELECT v, apigee.latency_hist_bin(v) FROM unnest($1::integer[]) v", vals)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var v, want int32
			if err := rows.Scan(&v, &want); err != nil {
				t.Fatal(err)
			}
			if got := latencyBin(v); got != want {
				t.Errorf("latencyBin(%d) = %d, SQL %d", v, got, want)
			}
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if n != len(vals) {
			t.Fatalf("compared %d values, want %d", n, len(vals))
		}
	})
}

// histMismatchSQL counts the rows of a rollup table whose latency
// histograms differ, bin by bin, from apigee.latency_hist_of over the raw
// rows of their group: the histograms are built in Go, the function is the
// SQL definition.
func histMismatchSQL(table, width, dimensions string) string {
	var same []string
	for _, d := range strings.Split(dimensions, ", ") {
		same = append(same, "raw."+d+" IS NOT DISTINCT FROM r."+d)
	}
	return `
WITH raw AS (
	SELECT date_bin('` + width + `', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start, ` + dimensions + `,
		apigee.latency_hist_of(array_agg(total_response_time)) AS t, apigee.latency_hist_of(array_agg(target_response_time)) AS g
	FROM apigee.api_calls GROUP BY 1, ` + dimensions + `
)
SELECT count(*) FROM apigee.` + table + ` r
WHERE NOT EXISTS (SELECT 1 FROM raw WHERE raw.bucket_start = r.bucket_start AND ` + strings.Join(same, " AND ") + `
	AND (r.total_ms_hist).bins = (raw.t).bins AND (r.total_ms_hist).counts = (raw.t).counts
	AND (r.target_ms_hist).bins = (raw.g).bins AND (r.target_ms_hist).counts = (raw.g).counts)`
}

// TestHistogramsMatchSQL checks every rollup row's histograms exactly:
// groups with one value, many (the dense form), latency 0 (its bin far
// below the others), NULL latencies only, and values arriving below a
// dense histogram's first bin.
func TestHistogramsMatchSQL(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		rng := rand.New(rand.NewPCG(11, 12))
		hour := time.Now().UTC().Add(-5 * time.Hour).Truncate(time.Hour)
		calls := mixedCalls(rng, hour, 60, 30)
		// One group whose latencies climb then fall far below, so its
		// dense histogram grows at both ends, with zeros among them.
		for i := range 200 {
			v := int32(1000 + 50*i)
			if i >= 100 {
				v = int32(1 + i%7)
			}
			if i%40 == 0 {
				v = 0
			}
			calls = append(calls, call{at: hour.Add(30*time.Minute + time.Duration(i)*time.Millisecond),
				tenant: "tenant-z", proxy: "wide", status: 200, total: ptr(v), target: ptr(v / 3)})
		}
		calls = append(calls, call{at: hour.Add(45 * time.Minute), tenant: "tenant-z", proxy: "none", status: 204})
		insertCalls(t, db, calls)
		runUntilDone(t, newTestRunner(t, db, testConfig(), nil))
		assertRollupsMatchRaw(t, db)
		for _, c := range []struct{ table, width, dims string }{
			{"api_calls_1m", "1 minute", dims},
			{"api_calls_1h", "1 hour", dims},
			{"proxy_calls_1m", "1 minute", proxyDims},
			{"proxy_calls_1h", "1 hour", proxyDims},
			{"app_calls_1m", "1 minute", appDims},
			{"app_calls_1h", "1 hour", appDims},
		} {
			if n := queryInt(t, db.Admin, histMismatchSQL(c.table, c.width, c.dims)); n != 0 {
				t.Errorf("%s: %d rows whose histograms differ from latency_hist_of", c.table, n)
			}
		}
		// The climbing group's hour histogram is dense in Go: more than
		// sparseMax bins.
		if n := queryInt(t, db.Admin, "SELECT cardinality((total_ms_hist).bins) FROM apigee.proxy_calls_1h WHERE apiproxy = 'wide'"); n <= sparseMax {
			t.Fatalf("the climbing group has %d bins, want more than %d", n, sparseMax)
		}
	})
}

// TestSmallCopyChunks runs a refresh whose every COPY stream holds a few
// rows (copyChunk of 1 KiB) and whose writer inserts the stage rows after
// every stream (insertEvery 1): the rollups still equal the raw rows. Not
// parallel: it changes copyChunk and insertEvery while no other test runs.
func TestSmallCopyChunks(t *testing.T) {
	savedChunk, savedEvery := copyChunk, insertEvery
	copyChunk, insertEvery = 1<<10, 1
	t.Cleanup(func() { copyChunk, insertEvery = savedChunk, savedEvery })
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		rng := rand.New(rand.NewPCG(13, 14))
		hour := time.Now().UTC().Add(-4 * time.Hour).Truncate(time.Hour)
		calls := mixedCalls(rng, hour, 70, 30)
		insertCalls(t, db, calls)
		runs := runUntilDone(t, newTestRunner(t, db, testConfig(), nil))
		var read int64
		for _, s := range runs {
			read += s.RowsRead
		}
		if read != int64(len(calls)) {
			t.Fatalf("read %d rows, want %d", read, len(calls))
		}
		assertRollupsMatchRaw(t, db)
	})
}
