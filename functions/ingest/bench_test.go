package ingest

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// BenchmarkCore feeds 100-record messages through the whole core (decode,
// validate, group commit, write) on TimescaleDB. Side-by-side ratios against
// raw COPY come from `make bench-ingest`; this one is for profiling.
func BenchmarkCore(b *testing.B) {
	db := testkit.New(b, testkit.TimescaleDB)
	s := newService(b, db, nil)
	now := time.Now().UTC()
	b.ResetTimer()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range b.N {
		var sb strings.Builder
		for j := range 100 {
			sb.WriteString(rec(fmt.Sprintf("b%d-%d", i, j), now.Add(-time.Duration(j)*time.Second)))
			sb.WriteByte('\n')
		}
		body := wrapped(fmt.Sprint(i), sb.String(), nil)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if code := post(b, s, body, nil); code != http.StatusNoContent {
				b.Errorf("status %d", code)
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "rows/s")
}
