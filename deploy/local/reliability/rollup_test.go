//go:build reliability

package reliability

import (
	"context"
	"testing"
	"time"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/pushrelay"
	"apigee-timescale/functions/rollup"
)

// TestRollupDuringIngest runs the rollup function again and again while
// ingest takes a sustained load, on a database that also holds four-day-old
// calls past a two-day raw retention: rollup folds the old calls into the
// minute rollups and drops their chunk or partition during the load. No
// run fails or deadlocks, no ingest answer misses its deadline, and once
// the load is done the rollups count every call exactly.
func TestRollupDuringIngest(t *testing.T) { each(t, testRollupDuringIngest) }

func testRollupDuringIngest(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ctx := context.Background()
	ing, _, _ := h.startIngest(t)
	relay, rec := h.relay(t, h.sub, ing.URL, nil)
	run := h.startRollup(t, "RAW_RETENTION=7d", "REJECTS_RETENTION=7d", "RUN_BUDGET=3s")

	// Under a sustained load the refresh always has new minutes to chase;
	// RUN_BUDGET (3s here) ends it so that retention gets its turn.

	// Old calls, stored before the load; no rollup has seen them yet.
	old := h.callsEnding(t, 2000, time.Now().Add(-10*24*time.Hour))
	if _, err := h.publish(ctx, h.topic, old, 0); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, int64(len(old)), 30*time.Second)
	var deadlocksBefore int64
	if err := h.db.Admin.QueryRow(ctx, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").Scan(&deadlocksBefore); err != nil {
		t.Fatal(err)
	}

	const n = 9000
	msgs := h.calls(t, n)
	loadStart := time.Now()
	wait := h.publishAsync(t, h.topic, msgs, 900)
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		_ = relay.WaitFor(ctx, func(s pushrelay.Stats) bool { return s.Acked+s.DeadLettered >= int64(len(old)+n) })
		close(done)
	}()
	rs := runUntil(t, run, done)
	dropped := rs.dropped
	wait()
	waitAcked(t, relay, int64(len(old)+n), time.Second)
	loadTook := time.Since(loadStart)
	// Catch up on what the last runs left pending.
	var final rollup.Summary
	for range 10 {
		final = run(t)
		dropped += final.ChunksDropped
		if final.Status == "ok" && final.PendingMinutes == 0 {
			break
		}
	}
	if final.PendingMinutes != 0 {
		t.Fatalf("rollup still has %d minutes pending after the load", final.PendingMinutes)
	}

	h.assertStoredOnce(t, msgs) // and none of the old calls: their chunk is gone
	alive(t, ing)
	if !rs.droppedDuringLoad {
		t.Fatalf("retention dropped %d chunks, none during the load (%d runs)", dropped, rs.runs)
	}
	var deadlocks int64
	if err := h.db.Admin.QueryRow(ctx, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks -= deadlocksBefore; deadlocks != 0 {
		t.Errorf("%d deadlocks detected during the load", deadlocks)
	}
	a := answered(rec)
	if a.timeouts != 0 || a.slowest > pushDeadline {
		t.Errorf("%d attempts without an answer, slowest %v; want every answer within the %v push deadline", a.timeouts, a.slowest, pushDeadline)
	}

	sum1m, oldSum := h.assertRollupsExact(t, n, len(old))
	t.Logf("%d rollup runs (%d skipped, slowest %v) during %d calls over %v; retention dropped %d chunks/partitions during the load; 0 deadlocks; ingest answers %v, slowest %v; rollups exact: %d calls in 1m and 1h, %d old calls kept in 1m",
		rs.runs, rs.skipped, rs.slowest, n, loadTook.Round(time.Millisecond), dropped, rec.Statuses(), a.slowest.Round(time.Millisecond), sum1m, oldSum)
}

// rollupRuns is what the runs during a load did.
type rollupRuns struct {
	runs, skipped, dropped int
	droppedDuringLoad      bool
	slowest                time.Duration
}

// runUntil triggers rollup runs one after the other, 300 ms apart, until
// done is closed.
func runUntil(t *testing.T, run func(*testing.T) rollup.Summary, done <-chan struct{}) rollupRuns {
	t.Helper()
	var rs rollupRuns
	for {
		sum := run(t)
		rs.runs++
		rs.slowest = max(rs.slowest, time.Duration(sum.DurationMS)*time.Millisecond)
		if sum.Status == "skipped" {
			rs.skipped++
		}
		if sum.ChunksDropped > 0 {
			rs.dropped += sum.ChunksDropped
			select {
			case <-done:
			default:
				rs.droppedDuringLoad = true
			}
		}
		select {
		case <-done:
			return rs
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// assertRollupsExact checks that every minute of the load is counted once
// in api_calls_1m and api_calls_1h (n calls in all), and that the old
// calls stay counted in the minute rollups though their raw rows are gone;
// it returns the minute rollups' totals, recent and old.
func (h *harness) assertRollupsExact(t *testing.T, n, old int) (sum1m, oldSum int64) {
	t.Helper()
	recent := time.Now().Add(-24 * time.Hour) // between the load and the old calls
	var badMinutes, sum1h int64
	if err := h.db.Admin.QueryRow(context.Background(), `
		WITH raw AS (SELECT date_trunc('minute', received_at) AS m, count(*) AS c FROM apigee.api_calls GROUP BY 1),
		     r1m AS (SELECT bucket_start AS m, sum(calls) AS c FROM apigee.api_calls_1m WHERE bucket_start > $1 GROUP BY 1)
		SELECT (SELECT count(*) FROM raw FULL JOIN r1m USING (m) WHERE raw.c IS DISTINCT FROM r1m.c),
		       (SELECT coalesce(sum(c), 0) FROM r1m),
		       (SELECT coalesce(sum(calls), 0) FROM apigee.api_calls_1h WHERE bucket_start > $1 - interval '1 hour'),
		       (SELECT coalesce(sum(calls), 0) FROM apigee.api_calls_1m WHERE bucket_start < $1)`,
		recent).Scan(&badMinutes, &sum1m, &sum1h, &oldSum); err != nil {
		t.Fatal(err)
	}
	if badMinutes != 0 || sum1m != int64(n) || sum1h != int64(n) || oldSum != int64(old) {
		t.Fatalf("rollups: %d minutes differ from the raw rows; 1m total %d, 1h total %d, want %d; old calls in 1m %d, want %d",
			badMinutes, sum1m, sum1h, n, oldSum, old)
	}
	return sum1m, oldSum
}

// startRollup starts the rollup function as a child process, logging in as
// a member of apigee_rollup, and returns a function that triggers one run
// as Cloud Scheduler does and fails the test on an error answer.
func (h *harness) startRollup(t *testing.T, env ...string) func(t *testing.T) rollup.Summary {
	t.Helper()
	ctx := context.Background()
	role := "rel_rollup_" + stack.RandomSuffix(4)
	dsn, err := h.db.Login(ctx, role, stack.RandomSuffix(16), "apigee_rollup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.db.DropRole(context.Background(), role) })
	logs := &stack.SyncBuffer{}
	dumpOnFailure(t, "rollup", logs)
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p, err := stack.StartProcess(ctx, "rollup", binary(t, "rollup"), port,
		append([]string{"DATABASE_URL=" + dsn, "DB_APPLICATION_NAME=reliability-rollup"}, env...), logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	return func(t *testing.T) rollup.Summary {
		t.Helper()
		var sum rollup.Summary
		if err := stack.Trigger(ctx, nil, p.URL, "rollup", nil, &sum); err != nil {
			t.Fatal(err)
		}
		return sum
	}
}
