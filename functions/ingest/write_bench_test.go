package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

// BenchmarkWrite writes batches of 80 rows (what 256 concurrent
// single-record deliveries make) and of 1,000 through one connection as
// the ingest role, and reports, besides rows/s, the PostgreSQL backend's
// CPU per row when the server runs on this machine (read from /proc):
// the difference between the two sizes is the fixed cost of a batch.
//
//	go test -run '^$' -bench BenchmarkWrite -benchtime 20000x ./functions/ingest/
func BenchmarkWrite(b *testing.B) {
	for _, size := range []int{80, 1000} {
		b.Run(fmt.Sprintf("rows=%d", size), func(b *testing.B) {
			db := testkit.New(b, testkit.TimescaleDB)
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
			now := time.Now().UTC()
			calls := make([]Call, b.N)
			for i := range calls {
				calls[i] = testCall(fmt.Sprintf("bench-%d", i), "tenant-a", now.Add(-time.Duration(i%60)*time.Second))
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
		})
	}
}
