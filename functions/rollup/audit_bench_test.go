package rollup

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/audit"
)

// BenchmarkVerify writes VERIFY_BENCH_ROWS rows (default 1,000,000) through
// the ingest Writer in batches of 1,000, seals them, and times one full
// Verify as make verify runs it, reporting rows/s:
//
//	go test -run '^$' -bench BenchmarkVerify -benchtime 1x -timeout 30m ./functions/rollup/
func BenchmarkVerify(b *testing.B) {
	total := 1_000_000
	if v := os.Getenv("VERIFY_BENCH_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("VERIFY_BENCH_ROWS: %v", err)
		}
		total = n
	}
	const perBatch = 1000
	ctx := context.Background()
	db := testkit.New(b, testkit.TimescaleDB)
	w := ingestWriter(b, db)
	start := time.Now().Add(-12 * time.Hour).UTC().Truncate(time.Millisecond)
	// Two writers, as the 2-core machine allows.
	batches := make(chan int)
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				batch := &ingest.Batch{Messages: 1}
				for j := 0; j < perBatch && i*perBatch+j < total; j++ {
					c := auditCall(fmt.Sprintf("bench-%d-%d", i, j), start.Add(time.Duration(i*perBatch+j)*40*time.Millisecond))
					c.Extra = nil
					batch.Calls = append(batch.Calls, c)
				}
				if _, err := w.Write(ctx, batch); err != nil {
					select { // keep draining, so the sender never blocks
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i*perBatch < total; i++ {
		batches <- i
	}
	close(batches)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	r := newTestRunner(b, db, testConfig(), nil)
	pc, err := r.db.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var s Summary
	err = r.seal(ctx, pc.Conn(), &s)
	pc.Release()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		rep, err := audit.Verify(ctx, db.Admin, audit.Options{Orphans: true}) // as make verify does
		if err != nil || rep.Problem != nil || rep.Rows != int64(total) {
			b.Fatalf("verify: %v %+v", err, rep)
		}
		el := time.Since(t0)
		b.ReportMetric(float64(rep.Rows)/el.Seconds(), "rows/s")
		b.ReportMetric(float64(rep.Batches), "batches")
	}
}
