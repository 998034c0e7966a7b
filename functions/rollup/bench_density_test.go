package rollup

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/testkit"
)

// benchDensities are the rows per minute of issue 13's production-density
// runs: the same 1,000,000 rows over 100 or over 10 minutes.
var benchDensities = []int{10_000, 100_000}

// Targets of issue 13, as speed ratios.
const (
	targetBuild = 0.7 // full refresh ÷ plain aggregate
	targetRead  = 10  // raw-row query time ÷ rollup query time
)

// plainSQL is the baseline the refresh is measured against: one GROUP BY
// per minute over the rollup's 8 dimensions with the same counts, sums,
// minima and maxima and percentile_cont p50/p95/p99 of both latencies,
// written with CREATE TABLE AS.
const plainSQL = `
CREATE TABLE bench_plain AS
SELECT date_bin('1 minute', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start, ` + dims + `,
	count(*) AS calls,
	count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500) AS errors,
	count(*) FILTER (WHERE response_status_code BETWEEN 400 AND 499) AS client_errors,
	sum(request_size) AS request_bytes, sum(response_size) AS response_bytes,
	count(total_response_time) AS total_ms_count, sum(total_response_time) AS total_ms_sum,
	min(total_response_time) AS total_ms_min, max(total_response_time) AS total_ms_max,
	percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_response_time) AS total_ms_p,
	count(target_response_time) AS target_ms_count, sum(target_response_time) AS target_ms_sum,
	min(target_response_time) AS target_ms_min, max(target_response_time) AS target_ms_max,
	percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY target_response_time) AS target_ms_p
FROM apigee.api_calls
GROUP BY 1, ` + dims

// densityResult is one density run's ratios, for the closing table.
type densityResult struct {
	kind      testkit.Kind
	perMinute int
	plain     time.Duration
	full      time.Duration
	cpu       refreshCPU
	reads     []readResult
}

// refreshCPU is what a refresh cost in CPU: its database backend's and the
// function's own (this process's, which runs nothing else meanwhile).
type refreshCPU struct {
	db, fn time.Duration
	// heap is the most heap in use sampled during the refresh.
	heap uint64
}

func benchDensity(b *testing.B, kind testkit.Kind, perMinute int) densityResult {
	b.StopTimer()
	ctx := context.Background()
	db := testkit.New(b, kind)
	end := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	start := end.Add(-time.Duration(benchRows/perMinute) * time.Minute)
	benchLoad(b, db, start, benchRows, 60/float64(perMinute), "d", denseShape)

	// Plain aggregate, refresh, plain aggregate again: the mean of the two
	// plain runs is the baseline, so drift on a shared machine cancels.
	plain := func() time.Duration {
		if _, err := db.Admin.Exec(ctx, "DROP TABLE IF EXISTS bench_plain"); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := db.Admin.Exec(ctx, plainSQL); err != nil {
			b.Fatalf("plain aggregate: %v", err)
		}
		return time.Since(t0)
	}
	p1 := plain()
	cfg := testConfig()
	cfg.RunBudget = time.Hour
	r := newTestRunner(b, db, cfg, nil)
	b.StartTimer()
	full, s, cpu := benchRefresh(b, db, r)
	b.StopTimer()
	p2 := plain()
	res := densityResult{kind: kind, perMinute: perMinute, plain: (p1 + p2) / 2, full: full, cpu: cpu}
	if s.RowsRead != benchRows {
		b.Fatalf("refresh read %d rows, want %d", s.RowsRead, benchRows)
	}
	if _, err := db.Admin.Exec(ctx, "ANALYZE apigee.api_calls_1m; ANALYZE apigee.api_calls_1h; ANALYZE apigee.proxy_calls_1m; ANALYZE apigee.proxy_calls_1h; ANALYZE apigee.app_calls_1m; ANALYZE apigee.app_calls_1h"); err != nil {
		b.Fatal(err)
	}
	res.reads = benchReads(b, db, end)

	m1 := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.api_calls_1m")
	h1 := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.api_calls_1h")
	pm := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.proxy_calls_1m")
	ph := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.proxy_calls_1h")
	am := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.app_calls_1m")
	ah := queryInt(b, db.Admin, "SELECT count(*) FROM apigee.app_calls_1h")
	b.ReportMetric(full.Seconds(), "full_s")
	b.ReportMetric(res.plain.Seconds(), "plain_s")
	b.ReportMetric(res.plain.Seconds()/full.Seconds(), "rollup/plain_x")
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s, %d rows per minute: %d raw rows → %d minute rows, %d hour rows; per proxy %d minute rows, %d hour rows; per app %d minute rows, %d hour rows\n",
		kind, perMinute, benchRows, m1, h1, pm, ph, am, ah)
	fmt.Fprintf(&sb, "  full refresh (1m + 1h, wide, per proxy, per app): %8v  plain aggregate: %v / %v  rollup ÷ plain = %.2f × (target ≥ %.1f ×)\n",
		full.Round(time.Millisecond), p1.Round(time.Millisecond), p2.Round(time.Millisecond), res.plain.Seconds()/full.Seconds(), targetBuild)
	fmt.Fprintf(&sb, "  refresh CPU per raw row: database %.1f µs, function %.1f µs; function heap in use at most %d MiB\n",
		float64(cpu.db.Microseconds())/benchRows, float64(cpu.fn.Microseconds())/benchRows, cpu.heap>>20)
	for _, rd := range res.reads {
		fmt.Fprintf(&sb, "  read %-40s %-3s rollups %8v  raw %8v  = %6.1f ×\n", rd.name, rd.window, rd.rollup.Round(time.Millisecond), rd.raw.Round(time.Millisecond), rd.ratio())
	}
	// Printed, not logged: the benchmark log keeps only its first lines.
	fmt.Print(sb.String())
	return res
}

// benchRefresh runs the refresh stage alone (no seal, retention, anomalies
// or verify) until no invalidation is left, and returns its time. Its
// database CPU is that of every backend of db (the refresh reads on a
// second connection).
func benchRefresh(b *testing.B, db *testkit.DB, r *Runner) (time.Duration, Summary, refreshCPU) {
	b.Helper()
	ctx := context.Background()
	pc, err := r.db.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Release()
	conn := pc.Conn()
	var storage string
	if err := conn.QueryRow(ctx, "SELECT value FROM apigee.settings WHERE key = 'storage'").Scan(&storage); err != nil {
		b.Fatal(err)
	}
	var s Summary
	db0 := databaseCPU(b, db)
	fn0, fnOK := testkit.BackendCPU(os.Getpid())
	stop, peak := sampleHeap()
	t0 := time.Now()
	if err := r.refresh(ctx, conn, storage, time.Now().Add(time.Hour), &s); err != nil {
		b.Fatalf("refresh: %v", err)
	}
	d := time.Since(t0)
	stop()
	db1 := databaseCPU(b, db)
	fn1, _ := testkit.BackendCPU(os.Getpid())
	if !fnOK {
		b.Fatal("CPU of this process not readable from /proc")
	}
	var dbCPU time.Duration
	for pid, t := range db1 {
		dbCPU += t - db0[pid] // a backend started meanwhile counts from zero
	}
	if s.PendingMinutes != 0 {
		b.Fatalf("refresh left %d minutes", s.PendingMinutes)
	}
	return d, s, refreshCPU{db: dbCPU, fn: fn1 - fn0, heap: *peak}
}

// databaseCPU returns the CPU so far of each backend on db's database.
func databaseCPU(tb testing.TB, db *testkit.DB) map[int]time.Duration {
	tb.Helper()
	rows, err := db.Admin.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		tb.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		tb.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		t, ok := testkit.BackendCPU(int(pid))
		if !ok {
			tb.Fatalf("CPU of backend %d not readable from /proc", pid)
		}
		out[int(pid)] = t
	}
	return out
}

// sampleHeap samples the heap in use every 20 ms until stop returns.
func sampleHeap() (stop func(), peak *uint64) {
	peak = new(uint64)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			*peak = max(*peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }, peak
}

// printTargets ends the run with every ratio against its target, in the
// "| rollup: … |" rows deploy/local/bench-summary.sh copies into make
// bench's table.
func printTargets(b *testing.B, results []densityResult) {
	if len(results) == 0 {
		return
	}
	w := os.Stdout
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| rollup benchmark (issue 13) | measured | target | met |")
	fmt.Fprintln(w, "|---|---:|---|---|")
	for _, r := range results {
		x := r.plain.Seconds() / r.full.Seconds()
		fmt.Fprintf(w, "| rollup: full refresh ÷ plain aggregate, %s, %d/min | %.2f × | ≥ %.1f × | %s |\n", r.kind, r.perMinute, x, targetBuild, verdict(x >= targetBuild))
	}
	for _, r := range results {
		for _, rd := range r.reads {
			fmt.Fprintf(w, "| rollup: read %s (%s), %s, %d/min: raw ÷ rollups | %.1f × | ≥ %d × | %s |\n",
				rd.name, rd.window, r.kind, r.perMinute, rd.ratio(), targetRead, verdict(rd.ratio() >= targetRead))
		}
	}
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
