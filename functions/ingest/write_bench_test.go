package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/migrations"
)

// BenchmarkWrite writes batches of 80 rows (what 256 concurrent
// single-record deliveries make) and of 1,000 through one connection as
// the ingest role, and reports, besides rows/s, the PostgreSQL backend's
// CPU per row when the server runs on this machine (read from /proc):
// the difference between the two sizes is the fixed cost of a batch.
// schema=00016 is the raw table before migration 00017 (its down
// migration: the primary key on message_id and four more indexes), for
// the before and after of one run.
//
//	go test -run '^$' -bench BenchmarkWrite -benchtime 20000x ./functions/ingest/
func BenchmarkWrite(b *testing.B) {
	for _, schema := range []string{"00016", "00017"} {
		for _, size := range []int{80, 1000} {
			b.Run(fmt.Sprintf("schema=%s/rows=%d", schema, size), func(b *testing.B) {
				db := testkit.New(b, testkit.TimescaleDB)
				if schema == "00016" {
					undoRawIndexes(b, db)
				}
				now := time.Now().UTC()
				benchWrite(b, db, size, func(i int) Call {
					return testCall(fmt.Sprintf("bench-%d", i), "tenant-a", now.Add(-time.Duration(i%60)*time.Second))
				})
			})
		}
	}
}

// BenchmarkWriteIndexes is the ingest CPU and the bytes of each index of
// apigee.api_calls, one at a time, in batches of 1,000: the raw table of migration 00017
// without its batch_id index, with it, and with each index 00017 dropped
// added back; the difference to "key+batch_id" is that index's cost.
// schema=00016 is the raw table before 00017, all five.
//
//	go test -run '^$' -bench BenchmarkWriteIndexes -benchtime 50000x ./functions/ingest/
func BenchmarkWriteIndexes(b *testing.B) {
	for _, v := range []struct{ name, ddl string }{
		{"schema=00016", ""},
		{"key", "DROP INDEX apigee.api_calls_batch_idx"},
		{"key+batch_id", ""},
		{"key+batch_id_brin", "DROP INDEX apigee.api_calls_batch_idx; CREATE INDEX ON apigee.api_calls USING brin (batch_id) WITH (pages_per_range = 32)"},
		{"key+batch_id+received_at", "CREATE INDEX ON apigee.api_calls (received_at DESC)"},
		{"key+batch_id+apiproxy", "CREATE INDEX ON apigee.api_calls (apiproxy, received_at DESC)"},
		{"key+batch_id+tenant", "CREATE INDEX ON apigee.api_calls (tenant, received_at DESC)"},
		{"key+batch_id+pkey_00016", "ALTER TABLE apigee.api_calls ADD PRIMARY KEY (message_id, received_at)"},
	} {
		b.Run(v.name, func(b *testing.B) {
			db := testkit.New(b, testkit.TimescaleDB)
			if v.name == "schema=00016" {
				undoRawIndexes(b, db)
			}
			if v.ddl != "" {
				if _, err := db.Admin.Exec(context.Background(), v.ddl); err != nil {
					b.Fatal(err)
				}
			}
			// Calls as TestRowBytes writes them (40 proxies, 7 tenants),
			// 20 a millisecond as a busy gateway makes them.
			day := time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour)
			benchWrite(b, db, 1000, func(i int) Call {
				return benchCall("5d0c7e1a", i, day.Add(time.Duration(i)*50*time.Microsecond))
			})
		})
	}
}

func benchWrite(b *testing.B, db *testkit.DB, size int, call func(i int) Call) {
	_, dsn := db.Login(b, "apigee_ingest")
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 1 // one backend, whose CPU time is then the batches'
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	var pid int
	if err := pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		b.Fatal(err)
	}
	w := NewWriter(pool)
	calls := make([]Call, b.N)
	for i := range calls {
		calls[i] = call(i)
	}
	cpu0, cpuOK := testkit.BackendCPU(pid)
	b.ResetTimer()
	for lo := 0; lo < b.N; lo += size {
		batch := calls[lo:min(lo+size, b.N)]
		if _, err := w.Write(context.Background(), &Batch{Calls: batch, Messages: len(batch)}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	if cpu1, ok := testkit.BackendCPU(pid); ok && cpuOK {
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "backend-µs/row")
	}
	if rb, err := MeasureRowBytes(context.Background(), db.Admin); err == nil {
		b.ReportMetric(rb.PerRow(rb.Total()), "bytes/row")
	}
}

// undoRawIndexes applies migration 00017's down: the raw table as 00016
// left it.
func undoRawIndexes(tb testing.TB, db *testkit.DB) {
	tb.Helper()
	sqlDB, err := migrations.Open(db.URL, migrations.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer sqlDB.Close()
	p, err := migrations.NewProvider(sqlDB)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := p.ApplyVersion(context.Background(), 17, false); err != nil {
		tb.Fatal(err)
	}
}
