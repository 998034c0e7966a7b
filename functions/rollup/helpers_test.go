package rollup

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

// call is one raw row as a test writes it; nil pointers are NULL columns.
type call struct {
	at            time.Time
	tenant, proxy string
	env           string
	verb          string
	status        int16
	total, target *int32
	isError       *bool
	product, app  *string
	reqSize       *int64
	respSize      *int64
}

func ptr[T any](v T) *T { return &v }

var msgSeq atomic.Int64
var batchSeq atomic.Int64

// insertCalls writes rows as ingest does: the raw rows plus one
// rollup_invalidations row per minute they fall in, in one transaction,
// under a fresh batch id. It runs as the superuser.
func insertCalls(tb testing.TB, db *testkit.DB, calls []call) {
	tb.Helper()
	if len(calls) == 0 {
		return
	}
	ctx := context.Background()
	lo, hi := calls[0].at, calls[0].at
	for _, c := range calls {
		if c.at.Before(lo) {
			lo = c.at
		}
		if c.at.After(hi) {
			hi = c.at
		}
	}
	if _, err := db.Admin.Exec(ctx, "SELECT apigee.ensure_partitions($1::date, $2::date)",
		lo.UTC().Format(time.DateOnly), hi.UTC().Format(time.DateOnly)); err != nil {
		tb.Fatalf("ensure partitions: %v", err)
	}
	batch := batchSeq.Add(1)
	prefix := fmt.Sprintf("%s-%d-", db.Name, batch)
	rows := make([][]any, len(calls))
	minutes := map[time.Time]bool{}
	for i, c := range calls {
		env := c.env
		if env == "" {
			env = "prod"
		}
		verb := c.verb
		if verb == "" {
			verb = "GET"
		}
		rows[i] = []any{c.at, prefix + fmt.Sprint(msgSeq.Add(1)), c.tenant, "org", env, c.proxy, verb, "/p",
			c.status, c.total, c.target, c.isError, c.product, c.app, c.reqSize, c.respSize, batch}
		minutes[c.at.UTC().Truncate(time.Minute)] = true
	}
	tx, err := db.Admin.Begin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer tx.Rollback(ctx)
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"apigee", "api_calls"},
		[]string{"received_at", "message_id", "tenant", "organization", "environment", "apiproxy", "request_verb", "request_path",
			"response_status_code", "total_response_time", "target_response_time", "is_error", "api_product", "developer_app",
			"request_size", "response_size", "batch_id"},
		pgx.CopyFromRows(rows))
	if err != nil {
		tb.Fatalf("copy calls: %v", err)
	}
	ms := make([]time.Time, 0, len(minutes))
	for m := range minutes {
		ms = append(ms, m)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start) SELECT $1, unnest($2::timestamptz[])", batch, ms); err != nil {
		tb.Fatalf("invalidations: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		tb.Fatal(err)
	}
}

// rollupPool returns a pool logged in as a member of apigee_rollup, the
// role the function runs as.
func rollupPool(tb testing.TB, db *testkit.DB) *pgxpool.Pool {
	tb.Helper()
	return db.LoginPool(tb, "apigee_rollup")
}

// testConfig is DefaultConfig with anything a test may tune.
func testConfig() Config {
	c := DefaultConfig()
	c.RunBudget = time.Minute
	return c
}

func newTestRunner(tb testing.TB, db *testkit.DB, cfg Config, pub Publisher) *Runner {
	tb.Helper()
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("config: %v", err)
	}
	return NewRunner(rollupPool(tb, db), cfg, pub)
}

func mustRun(tb testing.TB, r *Runner) Summary {
	tb.Helper()
	s, err := r.Run(context.Background())
	if err != nil {
		tb.Fatalf("run: %v (summary %+v)", err, s)
	}
	if s.Status != "ok" {
		tb.Fatalf("run status %q, want ok: %+v", s.Status, s)
	}
	return s
}

// runUntilDone runs until no invalidation is pending and returns the runs.
func runUntilDone(tb testing.TB, r *Runner) []Summary {
	tb.Helper()
	var out []Summary
	for i := 0; i < 1000; i++ {
		s := mustRun(tb, r)
		out = append(out, s)
		if s.PendingMinutes == 0 {
			return out
		}
	}
	tb.Fatal("rollup never caught up")
	return nil
}

func queryInt(tb testing.TB, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) int64 {
	tb.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

// lognormal draws exp(N(mu, sigma)) rounded to whole milliseconds.
func lognormal(rng *rand.Rand, median, sigma float64) int32 {
	return int32(math.Round(median * math.Exp(rng.NormFloat64()*sigma)))
}

// rollupMismatchSQL lists rows that differ between a rollup table and the
// same aggregation done directly over the raw rows (both directions).
// Histograms are compared by their total count, which must equal the
// number of latencies.
func rollupMismatchSQL(table, width string) string {
	return mismatchSQL(table, width, dims, `calls, errors, client_errors, request_bytes, response_bytes,
		total_ms_count, total_ms_sum, total_ms_min, total_ms_max, target_ms_count, target_ms_sum, target_ms_min, target_ms_max`,
		`count(*) FILTER (WHERE response_status_code BETWEEN 400 AND 499) AS client_errors`)
}

// proxyMismatchSQL is rollupMismatchSQL for the narrow per-proxy rollups
// (proxy_calls_1m/1h): status classes instead of status codes.
func proxyMismatchSQL(table, width string) string { return narrowMismatchSQL(table, width, proxyDims) }

// appMismatchSQL is proxyMismatchSQL for the per-app rollups.
func appMismatchSQL(table, width string) string { return narrowMismatchSQL(table, width, appDims) }

func narrowMismatchSQL(table, width, dimensions string) string {
	return mismatchSQL(table, width, dimensions, `calls, errors, status_2xx, status_3xx, status_4xx, status_5xx, request_bytes, response_bytes,
		total_ms_count, total_ms_sum, total_ms_min, total_ms_max, target_ms_count, target_ms_sum, target_ms_min, target_ms_max`,
		`count(*) FILTER (WHERE response_status_code / 100 = 2) AS status_2xx,
		count(*) FILTER (WHERE response_status_code / 100 = 3) AS status_3xx,
		count(*) FILTER (WHERE response_status_code / 100 = 4) AS status_4xx,
		count(*) FILTER (WHERE response_status_code / 100 = 5) AS status_5xx`)
}

// mismatchSQL counts the rows of table (grouped by dimensions, compared on
// metrics) that a direct aggregation of the raw rows does not give, and the
// raw groups it lacks; statusCounts are the status-dependent aggregates
// that differ between the wide and the narrow rollups.
func mismatchSQL(table, width, dimensions, metrics, statusCounts string) string {
	return fmt.Sprintf(`
WITH raw AS (
	SELECT date_bin('%[2]s', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start, %[3]s,
		count(*) AS calls,
		count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500) AS errors,
		%[5]s,
		coalesce(sum(request_size), 0) AS request_bytes, coalesce(sum(response_size), 0) AS response_bytes,
		count(total_response_time) AS total_ms_count, coalesce(sum(total_response_time), 0) AS total_ms_sum,
		min(total_response_time) AS total_ms_min, max(total_response_time) AS total_ms_max,
		count(target_response_time) AS target_ms_count, coalesce(sum(target_response_time), 0) AS target_ms_sum,
		min(target_response_time) AS target_ms_min, max(target_response_time) AS target_ms_max,
		count(total_response_time) AS total_hist_n, count(target_response_time) AS target_hist_n
	FROM apigee.api_calls GROUP BY 1, %[3]s
), rolled AS (
	SELECT bucket_start, %[3]s, %[4]s,
		apigee.latency_hist_count(total_ms_hist) AS total_hist_n, apigee.latency_hist_count(target_ms_hist) AS target_hist_n
	FROM apigee.%[1]s
)
SELECT count(*) FROM (
	(SELECT bucket_start, %[3]s, %[4]s, total_hist_n, target_hist_n FROM raw
	 EXCEPT ALL SELECT bucket_start, %[3]s, %[4]s, total_hist_n, target_hist_n FROM rolled)
	UNION ALL
	(SELECT bucket_start, %[3]s, %[4]s, total_hist_n, target_hist_n FROM rolled
	 EXCEPT ALL SELECT bucket_start, %[3]s, %[4]s, total_hist_n, target_hist_n FROM raw)
) d`, table, width, dimensions, metrics, statusCounts)
}

// assertRollupsMatchRaw fails unless the wide and the narrow rollup tables
// equal a direct aggregation of the raw rows.
func assertRollupsMatchRaw(tb testing.TB, db *testkit.DB) {
	tb.Helper()
	for _, c := range []struct {
		table, width string
		mismatch     func(table, width string) string
	}{
		{"api_calls_1m", "1 minute", rollupMismatchSQL},
		{"api_calls_1h", "1 hour", rollupMismatchSQL},
		{"proxy_calls_1m", "1 minute", proxyMismatchSQL},
		{"proxy_calls_1h", "1 hour", proxyMismatchSQL},
		{"app_calls_1m", "1 minute", appMismatchSQL},
		{"app_calls_1h", "1 hour", appMismatchSQL},
	} {
		if n := queryInt(tb, db.Admin, c.mismatch(c.table, c.width)); n != 0 {
			tb.Errorf("%s differs from the raw rows in %d rows", c.table, n)
		}
	}
	for _, table := range []string{"api_calls_1m", "proxy_calls_1m", "app_calls_1m"} {
		if n := queryInt(tb, db.Admin, "SELECT count(*) FROM apigee."+table); n == 0 {
			tb.Errorf("%s is empty", table)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
