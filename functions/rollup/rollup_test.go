package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

// mixedCalls returns rows over `minutes` minutes from start covering every
// column the rollup reads: NULL latencies, products and apps, is_error with
// and without a 5xx, 4xx, several tenants, proxies and verbs.
func mixedCalls(rng *rand.Rand, start time.Time, minutes, perMinute int) []call {
	var out []call
	statuses := []int16{200, 200, 200, 201, 404, 429, 500, 503}
	for m := 0; m < minutes; m++ {
		for i := 0; i < perMinute; i++ {
			c := call{
				at:     start.Add(time.Duration(m)*time.Minute + time.Duration(rng.IntN(60_000))*time.Millisecond),
				tenant: []string{"tenant-a", "tenant-b"}[rng.IntN(2)],
				proxy:  []string{"orders", "payments"}[rng.IntN(2)],
				verb:   []string{"GET", "POST"}[rng.IntN(2)],
				status: statuses[rng.IntN(len(statuses))],
			}
			if rng.IntN(10) > 0 {
				c.total = ptr(lognormal(rng, 80, 0.7))
				if rng.IntN(10) > 0 {
					c.target = ptr(*c.total / 2)
				}
			}
			if rng.IntN(20) == 0 {
				c.total = ptr(int32(0))
			}
			switch rng.IntN(4) {
			case 0:
				c.isError = ptr(true)
			case 1:
				c.isError = ptr(false)
			}
			if rng.IntN(3) > 0 {
				c.product = ptr("gold")
				c.app = ptr([]string{"app-1", "app-2"}[rng.IntN(2)])
			}
			if rng.IntN(5) > 0 {
				c.reqSize = ptr(int64(rng.IntN(5000)))
				c.respSize = ptr(int64(rng.IntN(50000)))
			}
			out = append(out, c)
		}
	}
	return out
}

func TestRefreshExactAndIdempotent(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		start := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(-7 * time.Minute)
		calls := mixedCalls(rng, start, 90, 40)
		// Two batches writing into overlapping minutes, as ingest would.
		insertCalls(t, db, calls[:1800])
		insertCalls(t, db, calls[1800:])
		r := newTestRunner(t, db, testConfig(), nil)

		s := mustRun(t, r)
		if s.RowsRead != int64(len(calls)) || s.MinutesRefreshed != 90 || s.HoursRefreshed != 3 || s.PendingMinutes != 0 {
			t.Fatalf("first run: %+v; want %d rows read, 90 minutes, 3 hours, nothing pending", s, len(calls))
		}
		if got := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.rollup_invalidations"); got != 0 {
			t.Fatalf("%d invalidations left", got)
		}
		assertRollupsMatchRaw(t, db)
		if got := queryInt(t, db.Admin, "SELECT sum(calls) FROM apigee.api_calls_1h"); got != int64(len(calls)) {
			t.Fatalf("hourly calls %d, want %d", got, len(calls))
		}
		if got := queryInt(t, db.Admin, "SELECT (last_run->>'minutes_refreshed')::bigint FROM apigee.rollup_state WHERE last_run->>'status' = 'ok'"); got != 90 {
			t.Fatalf("rollup_state.last_run records %d minutes, want 90", got)
		}

		t.Run("re-run does nothing", func(t *testing.T) {
			s := mustRun(t, r)
			if s.MinutesRefreshed != 0 || s.RowsRead != 0 {
				t.Fatalf("second run refreshed %+v", s)
			}
			assertRollupsMatchRaw(t, db)
		})
		t.Run("redelivered invalidations never double-count", func(t *testing.T) {
			// A redelivered batch inserts no raw rows but, at worst, its
			// invalidations again.
			if _, err := db.Admin.Exec(ctx, `INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
				SELECT 999, b FROM generate_series($1::timestamptz, $1::timestamptz + interval '89 minutes', interval '1 minute') b`,
				start.Truncate(time.Minute)); err != nil {
				t.Fatal(err)
			}
			s := mustRun(t, r)
			if s.MinutesRefreshed != 90 || s.RowsRead != int64(len(calls)) {
				t.Fatalf("refresh of redelivered minutes: %+v", s)
			}
			assertRollupsMatchRaw(t, db)
		})
		t.Run("the comparison notices a wrong row", func(t *testing.T) {
			tag, err := db.Admin.Exec(ctx, `UPDATE apigee.api_calls_1m SET errors = errors + 1
				WHERE bucket_start = (SELECT min(bucket_start) FROM apigee.api_calls_1m)`)
			if err != nil || tag.RowsAffected() == 0 {
				t.Fatalf("alter rows: %v (%d rows)", err, tag.RowsAffected())
			}
			if n := queryInt(t, db.Admin, rollupMismatchSQL("api_calls_1m", "1 minute")); n != 2*tag.RowsAffected() {
				t.Fatalf("%d altered rows give %d mismatches, want %d (each one both ways)", tag.RowsAffected(), n, 2*tag.RowsAffected())
			}
		})
	})
}

// A sparse backlog is refreshed in batches that double while they read
// few rows, up to REFRESH_BATCH_MINUTES, and the rollups stay exact.
func TestSparseBacklogBatchesGrow(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		rng := rand.New(rand.NewPCG(11, 12))
		start := time.Now().UTC().Add(-30 * time.Hour).Truncate(time.Hour)
		insertCalls(t, db, mixedCalls(rng, start, 7*60, 2))
		for _, tc := range []struct {
			name           string
			most           int
			batches, hours int
			explains       string
		}{
			{"default", DefaultBatchMinutes, 3, 7, "1 + 2 + 4 hours"},
			{"at most two hours", 120, 4, 7, "1 + 2 + 2 + 2 hours"},
			{"at most an hour and a half", 90, 7, 7, "an hour each: a batch leaves the hour it would cut short"},
			{"at most half an hour", 30, 14, 14, "half an hour each, each hour twice"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := db.Admin.Exec(context.Background(), `
					INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
					SELECT 1, b FROM generate_series($1::timestamptz, $1::timestamptz + interval '419 minutes', interval '1 minute') b`,
					start); err != nil {
					t.Fatal(err)
				}
				cfg := testConfig()
				cfg.BatchMinutes = tc.most
				s := mustRun(t, newTestRunner(t, db, cfg, nil))
				if s.MinutesRefreshed != 7*60 || s.HoursRefreshed != tc.hours || s.PendingMinutes != 0 || s.RefreshBatches != tc.batches {
					t.Fatalf("run: %+v; want 420 minutes and %d hours in %d batches (%s)", s, tc.hours, tc.batches, tc.explains)
				}
				assertRollupsMatchRaw(t, db)
			})
		}
	})
}

func TestNextLimit(t *testing.T) {
	for _, tc := range []struct {
		name        string
		limit, most int
		rows        int64
		want        int
	}{
		{"few rows: doubled", 60, 1440, 5_000, 120},
		{"doubled up to the most", 960, 1440, 5_000, 1440},
		{"at the most", 1440, 1440, 0, 1440},
		{"enough rows: kept", 60, 1440, growBelowRows, 60},
		{"shrunk below the current: the most", 240, 30, 5_000, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextLimit(tc.limit, tc.rows, tc.most); got != tc.want {
				t.Fatalf("nextLimit(%d, %d, %d) = %d, want %d", tc.limit, tc.rows, tc.most, got, tc.want)
			}
		})
	}
}

func TestLateDataCorrectsMinuteAndHour(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		hour := time.Now().UTC().Add(-26 * time.Hour).Truncate(time.Hour)
		insertCalls(t, db, mixedCalls(rng, hour, 60, 10))
		r := newTestRunner(t, db, testConfig(), nil)
		mustRun(t, r)
		var before time.Time
		if err := db.Admin.QueryRow(ctx, "SELECT max(refreshed_at) FROM apigee.api_calls_1m").Scan(&before); err != nil {
			t.Fatal(err)
		}

		// A day later, a few rows for minute 17 arrive.
		late := hour.Add(17*time.Minute + 30*time.Second)
		insertCalls(t, db, []call{
			{at: late, tenant: "tenant-a", proxy: "orders", status: 500, total: ptr(int32(900))},
			{at: late, tenant: "tenant-a", proxy: "orders", status: 200, total: ptr(int32(40)), target: ptr(int32(30))},
			{at: late, tenant: "tenant-c", proxy: "new", status: 200},
		})
		s := mustRun(t, r)
		inMinute := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.api_calls WHERE received_at >= $1 AND received_at < $2",
			late.Truncate(time.Minute), late.Truncate(time.Minute).Add(time.Minute))
		if s.MinutesRefreshed != 1 || s.HoursRefreshed != 1 || s.RowsRead != inMinute {
			t.Fatalf("late refresh: %+v; want exactly one minute (%d rows) and one hour", s, inMinute)
		}
		assertRollupsMatchRaw(t, db)
		// Only that minute was rewritten.
		if n := queryInt(t, db.Admin, "SELECT count(DISTINCT bucket_start) FROM apigee.api_calls_1m WHERE refreshed_at > $1", before); n != 1 {
			t.Fatalf("%d minutes rewritten, want 1", n)
		}
		if n := queryInt(t, db.Admin, "SELECT calls FROM apigee.api_calls_1h WHERE tenant = 'tenant-c'"); n != 1 {
			t.Fatalf("hour row of the late tenant has %d calls, want 1", n)
		}
	})
}

func TestBudgetStopsAndNextRunContinues(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		rng := rand.New(rand.NewPCG(5, 6))
		start := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)
		insertCalls(t, db, mixedCalls(rng, start, 10, 20))
		cfg := testConfig()
		cfg.BatchMinutes = 3
		cfg.RunBudget = time.Nanosecond
		r := newTestRunner(t, db, cfg, nil)

		runs := runUntilDone(t, r)
		if len(runs) != 4 {
			t.Fatalf("%d runs, want 4 (10 minutes in batches of 3, one batch per exhausted budget)", len(runs))
		}
		first := runs[0]
		if !first.BudgetExhausted || first.MinutesRefreshed != 3 || first.PendingMinutes != 7 {
			t.Fatalf("first run %+v; want 3 minutes refreshed, 7 pending, budget exhausted", first)
		}
		total := 0
		for _, s := range runs {
			total += s.MinutesRefreshed
		}
		if total != 10 {
			t.Fatalf("%d minutes refreshed in all, want 10", total)
		}
		assertRollupsMatchRaw(t, db)
	})
}

func TestConcurrentInvocations(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(7, 8))
		start := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)
		insertCalls(t, db, mixedCalls(rng, start, 30, 20))
		r := newTestRunner(t, db, testConfig(), nil)
		h := newHandler(func(context.Context) (*Runner, error) { return r, nil }, discardLogger())

		t.Run("a run in progress makes the next answer 200 skipped", func(t *testing.T) {
			holder := testkit.Connect(t, db.URL)
			if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", LockKey); err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
			var s Summary
			if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if rec.Code != http.StatusOK || s.Status != "skipped" || s.MinutesRefreshed != 0 {
				t.Fatalf("got %d %+v, want 200 skipped", rec.Code, s)
			}
			if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.api_calls_1m"); n != 0 {
				t.Fatalf("skipped run wrote %d rows", n)
			}
			if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", LockKey); err != nil {
				t.Fatal(err)
			}
		})
		t.Run("simultaneous invocations", func(t *testing.T) {
			const n = 6
			var wg sync.WaitGroup
			codes := make([]int, n)
			sums := make([]Summary, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
					codes[i] = rec.Code
					_ = json.Unmarshal(rec.Body.Bytes(), &sums[i])
				}()
			}
			wg.Wait()
			minutes := 0
			for i := range n {
				if codes[i] != http.StatusOK || (sums[i].Status != "ok" && sums[i].Status != "skipped") {
					t.Fatalf("invocation %d: %d %+v", i, codes[i], sums[i])
				}
				minutes += sums[i].MinutesRefreshed
			}
			if minutes != 30 {
				t.Fatalf("%d minutes refreshed across invocations, want each of the 30 exactly once", minutes)
			}
			assertRollupsMatchRaw(t, db)
		})
		t.Run("the lock is released after a run", func(t *testing.T) {
			probe := testkit.Connect(t, db.URL)
			var free bool
			if err := probe.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", LockKey).Scan(&free); err != nil || !free {
				t.Fatalf("lock still held after the runs (err %v)", err)
			}
		})
	})
}

// TestBatchShrinksOnStatementTimeout: a batch too big for the statement
// timeout is retried smaller instead of failing every run.
func TestBatchShrinksOnStatementTimeout(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		hour := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
		var calls []call
		for m := 0; m < 16; m++ {
			for p := 0; p < 5; p++ {
				calls = append(calls, call{at: hour.Add(time.Duration(m) * time.Minute), tenant: "tenant-a", proxy: fmt.Sprint("p", p), status: 200})
			}
		}
		insertCalls(t, db, calls)
		// Every minute row costs 20 ms: 16 minutes (80 rows) cannot fit in 1 s.
		if _, err := db.Admin.Exec(ctx, `
			CREATE FUNCTION public.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
			CREATE TRIGGER slow BEFORE INSERT ON apigee.api_calls_1m FOR EACH ROW EXECUTE FUNCTION public.slow_row()`); err != nil {
			t.Fatal(err)
		}
		role, dsn := db.Login(t, "apigee_rollup")
		if _, err := db.Admin.Exec(ctx, "ALTER ROLE "+role+" SET statement_timeout = '1s'"); err != nil {
			t.Fatal(err)
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		cfg := testConfig()
		cfg.BatchMinutes = 16
		r := NewRunner(pool, cfg, nil)
		s := mustRun(t, r)
		if s.BatchMinutes >= 16 || s.MinutesRefreshed != 16 || s.PendingMinutes != 0 {
			t.Fatalf("run: %+v; want all 16 minutes refreshed in smaller batches", s)
		}
		assertRollupsMatchRaw(t, db)
	})
}

func TestPartitionsAhead(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		r := newTestRunner(t, db, testConfig(), nil)
		later := time.Now().UTC().AddDate(0, 0, 20)
		r.now = func() time.Time { return later }
		s := mustRun(t, r)
		if db.Kind == testkit.TimescaleDB {
			if s.PartitionsCreated != 0 {
				t.Fatalf("created %d partitions on TimescaleDB", s.PartitionsCreated)
			}
			return
		}
		// Days −1 … +7 around the pinned clock, for four tables (the hourly
		// table by month).
		if s.PartitionsCreated < 3*9 {
			t.Fatalf("created %d partitions, want at least %d", s.PartitionsCreated, 3*9)
		}
		for _, name := range []string{"api_calls_", "ingest_rejects_", "api_calls_1m_"} {
			for d := -1; d <= 7; d++ {
				rel := "apigee_chunks." + name + later.AddDate(0, 0, d).Format("20060102")
				if queryInt(t, db.Admin, "SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)", rel) != 1 {
					t.Errorf("%s missing", rel)
				}
			}
		}
		rel := "apigee_chunks.api_calls_1h_" + later.AddDate(0, 0, 7).Format("200601")
		if queryInt(t, db.Admin, "SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)", rel) != 1 {
			t.Errorf("%s missing", rel)
		}
	})
}
