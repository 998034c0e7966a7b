package rollup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
)

type child struct {
	rel    string
	lo, hi time.Time
}

// children lists the chunks (TimescaleDB) or partitions of an apigee table
// with their time ranges, oldest first.
func children(tb testing.TB, db *testkit.DB, table string) []child {
	tb.Helper()
	q := `SELECT format('%I.%I', chunk_schema, chunk_name), range_start, range_end FROM timescaledb_information.chunks
		WHERE hypertable_schema = 'apigee' AND hypertable_name = $1 ORDER BY range_start`
	if db.Kind == testkit.Postgres {
		q = `SELECT rel, b[1]::timestamptz, b[2]::timestamptz FROM (
			SELECT i.inhrelid::regclass::text AS rel,
				regexp_match(pg_get_expr(k.relpartbound, k.oid), $r$FROM \('([^']*)'\) TO \('([^']*)'\)$r$) AS b
			FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid
			WHERE i.inhparent = ('apigee.' || $1)::regclass) s ORDER BY 2`
	}
	rows, err := db.Admin.Query(context.Background(), q, table)
	if err != nil {
		tb.Fatal(err)
	}
	var out []child
	var c child
	if _, err := pgx.ForEachRow(rows, []any{&c.rel, &c.lo, &c.hi}, func() error { out = append(out, c); return nil }); err != nil {
		tb.Fatal(err)
	}
	return out
}

// split divides children into those wholly older than cutoff and the rest.
func split(cs []child, cutoff time.Time) (expired, kept []child) {
	for _, c := range cs {
		if !c.hi.After(cutoff) {
			expired = append(expired, c)
		} else {
			kept = append(kept, c)
		}
	}
	return expired, kept
}

func rels(cs []child) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.rel
	}
	slices.Sort(out)
	return out
}

func TestRetention(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		now := time.Now().UTC()
		today := now.Truncate(day)
		// Cutoffs at noon never coincide with a chunk or partition bound, so
		// the test's clock and the database's cannot disagree about one.
		cutoff := func(daysAgo int) time.Time { return today.AddDate(0, 0, -daysAgo).Add(12 * time.Hour) }
		tables := []struct {
			table, tier string
			cutoff      time.Time
			timeCol     string
		}{
			{"api_calls", "raw", cutoff(8), "received_at"},
			{"ingest_rejects", "rejects", cutoff(3), "received_at"},
			{"api_calls_1m", "1m", cutoff(10), "bucket_start"},
			{"api_calls_1h", "1h", cutoff(12), "bucket_start"},
			// The narrow dashboard rollups (00019) share the wide ones' tiers.
			{"proxy_calls_1m", "1m", cutoff(10), "bucket_start"},
			{"proxy_calls_1h", "1h", cutoff(12), "bucket_start"},
			{"app_calls_1m", "1m", cutoff(10), "bucket_start"},
			{"app_calls_1h", "1h", cutoff(12), "bucket_start"},
		}
		cfg := testConfig()
		cfg.RawRetention = now.Sub(tables[0].cutoff)
		cfg.RejectsRetention = now.Sub(tables[1].cutoff)
		cfg.Rollup1mRetention = now.Sub(tables[2].cutoff)
		cfg.Rollup1hRetention = now.Sub(tables[3].cutoff)

		// Two calls and one reject on each of the last 46 days.
		var calls []call
		for d := 0; d <= 45; d++ {
			at := today.AddDate(0, 0, -d).Add(30 * time.Second)
			calls = append(calls, call{at: at, tenant: "tenant-a", proxy: "orders", status: 200, total: ptr(int32(d + 1))},
				call{at: at, tenant: "tenant-b", proxy: "orders", status: 500})
		}
		insertCalls(t, db, calls)
		if _, err := db.Admin.Exec(ctx, `INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, detail, record_index, payload, payload_sha256, batch_id)
			SELECT d + interval '1 minute', 'k' || n, 'tenant-a', 'not_json', 'd', 0, '\x00', '\x00', 1
			FROM generate_series(0, 45) n, LATERAL (SELECT $1::timestamptz - n * interval '1 day' AS d) x`, today); err != nil {
			t.Fatal(err)
		}
		// Roll everything up with retention off.
		off := testConfig()
		off.RawRetention, off.RejectsRetention, off.Rollup1mRetention, off.Rollup1hRetention = Off, Off, Off, Off
		offRunner := newTestRunner(t, db, off, nil)
		if s := mustRun(t, offRunner); s.ChunksDropped != 0 || s.MinutesRefreshed != 46 {
			t.Fatalf("run without retention: %+v", s)
		}

		rollupConn := testkit.Connect(t, mustDSN(t, db))
		t.Run("floor and tier checks", func(t *testing.T) {
			for _, c := range []struct{ tier, keep string }{{"raw", "1 day"}, {"1m", "6 days"}, {"rejects", "1 hour"}, {"apigee.settings", "30 days"}} {
				_, err := rollupConn.Exec(ctx, "SELECT * FROM apigee.apply_retention($1, $2::interval)", c.tier, c.keep)
				var pg *pgconn.PgError
				if !errors.As(err, &pg) || pg.Code != "22023" {
					t.Errorf("apply_retention(%s, %s): %v, want refusal 22023", c.tier, c.keep, err)
				}
			}
		})

		t.Run("pending rollups hold raw days", func(t *testing.T) {
			lateDay := today.AddDate(0, 0, -20)
			insertCalls(t, db, []call{{at: lateDay.Add(5 * time.Hour), tenant: "tenant-a", proxy: "late", status: 200}})
			before := children(t, db, "api_calls")
			rows, err := rollupConn.Query(ctx, "SELECT relation, outcome FROM apigee.apply_retention('raw', $1::interval)", interval(cfg.RawRetention))
			if err != nil {
				t.Fatal(err)
			}
			outcomes := map[string]string{}
			var rel, outcome string
			if _, err := pgx.ForEachRow(rows, []any{&rel, &outcome}, func() error { outcomes[rel] = outcome; return nil }); err != nil {
				t.Fatal(err)
			}
			for _, c := range before {
				got := outcomes[c.rel]
				want := ""
				switch {
				case !c.hi.After(lateDay):
					want = "dropped"
				case !c.lo.After(lateDay) && c.hi.After(lateDay):
					want = "held"
				}
				if got != want {
					t.Errorf("%s [%s, %s): outcome %q, want %q", c.rel, c.lo.Format(time.DateOnly), c.hi.Format(time.DateOnly), got, want)
				}
			}
			var wm time.Time
			if err := db.Admin.QueryRow(ctx, "SELECT raw_dropped_before FROM apigee.rollup_state").Scan(&wm); err != nil || !wm.Equal(lateDay) {
				t.Errorf("raw_dropped_before %v (err %v), want %v", wm, err, lateDay)
			}
		})

		t.Run("drops exactly the expired chunks", func(t *testing.T) {
			type plan struct {
				expired, kept []child
				keptRows      int64
			}
			// Roll up the pending minute first, so only retention changes rows.
			mustRun(t, offRunner)
			plans := map[string]plan{}
			for _, tb := range tables {
				expired, kept := split(children(t, db, tb.table), tb.cutoff)
				if len(expired) == 0 || len(kept) == 0 {
					t.Fatalf("%s: %d expired and %d kept chunks; the data should give both", tb.table, len(expired), len(kept))
				}
				n := queryInt(t, db.Admin, fmt.Sprintf("SELECT count(*) FROM apigee.%s WHERE %s >= $1", tb.table, tb.timeCol), kept[0].lo)
				plans[tb.table] = plan{expired, kept, n}
			}
			s := mustRun(t, newTestRunner(t, db, cfg, nil))
			if len(s.Held) != 0 {
				t.Fatalf("run: %+v; want nothing held", s)
			}
			want := 0
			for _, tb := range tables {
				p := plans[tb.table]
				want += len(p.expired)
				if got := rels(children(t, db, tb.table)); !slices.Equal(got, rels(p.kept)) {
					t.Errorf("%s keeps %v, want %v", tb.table, got, rels(p.kept))
				}
				for _, c := range p.expired {
					if n := queryInt(t, db.Admin, "SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)", c.rel); n != 0 {
						t.Errorf("%s still exists", c.rel)
					}
				}
				if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+tb.table); n != p.keptRows {
					t.Errorf("%s has %d rows, want the %d of its kept chunks", tb.table, n, p.keptRows)
				}
			}
			if s.ChunksDropped != want || len(s.Dropped) != want {
				t.Errorf("summary reports %d dropped (%v), want %d", s.ChunksDropped, s.Dropped, want)
			}
			rawKept := plans["api_calls"].kept
			var wm time.Time
			if err := db.Admin.QueryRow(ctx, "SELECT raw_dropped_before FROM apigee.rollup_state").Scan(&wm); err != nil || !wm.Equal(rawKept[0].lo) {
				t.Errorf("raw_dropped_before %v (err %v), want %v", wm, err, rawKept[0].lo)
			}
		})

		t.Run("late rows behind raw retention leave the rollups alone", func(t *testing.T) {
			// Day −9: raw rows dropped, minute rollups kept.
			at := today.AddDate(0, 0, -9).Add(30 * time.Second)
			minute := at.Truncate(time.Minute)
			before := tenantCounts(t, testkit.Connect(t, db.URL), fmt.Sprintf(
				"SELECT tenant, sum(calls)::bigint FROM apigee.api_calls_1m WHERE bucket_start = '%s' GROUP BY tenant", minute.Format(time.RFC3339)))
			if before["tenant-a"] != 1 || before["tenant-b"] != 1 {
				t.Fatalf("minute rollup before: %v", before)
			}
			insertCalls(t, db, []call{{at: at, tenant: "tenant-late", proxy: "orders", status: 200}})
			s := mustRun(t, newTestRunner(t, db, cfg, nil))
			if s.InvalidationsDiscarded != 1 || s.MinutesRefreshed != 0 {
				t.Fatalf("run: %+v; want the late minute's invalidation discarded", s)
			}
			after := tenantCounts(t, testkit.Connect(t, db.URL), fmt.Sprintf(
				"SELECT tenant, sum(calls)::bigint FROM apigee.api_calls_1m WHERE bucket_start = '%s' GROUP BY tenant", minute.Format(time.RFC3339)))
			if !maps2Equal(before, after) {
				t.Fatalf("minute rollup changed from %v to %v", before, after)
			}
			if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.api_calls WHERE received_at < $1", today.AddDate(0, 0, -8)); n != 0 {
				t.Fatalf("%d late raw rows survive behind the retention cutoff", n)
			}
		})
	})
}

func maps2Equal(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// mustDSN returns a login in apigee_rollup for direct calls.
func mustDSN(tb testing.TB, db *testkit.DB) string {
	tb.Helper()
	_, dsn := db.Login(tb, "apigee_rollup")
	return dsn
}
