package ingest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// BenchmarkServeHTTP is one single-record push delivery through the HTTP
// handler (envelope, validation, group commit with a writer that stores
// nothing, answer), 64 in flight as in make bench's (3a): its allocs/op is
// what the function allocates per delivery, batching included.
func BenchmarkServeHTTP(b *testing.B) {
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewService(cfg, Deps{Writer: nothingWriter{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	now := time.Now().UTC()
	bodies := make([][]byte, 4096)
	for i := range bodies {
		r := rec(fmt.Sprintf("bench-%d", i), now.Add(-time.Duration(i)*time.Second),
			`"target_response_time":"12"`, `"request_size":"0"`, `"response_size":"1834"`,
			`"client_ip":"203.0.113.7"`, `"useragent":"okhttp/4.12.0"`, `"developer_app":"app-3"`,
			`"api_product":"gold"`, `"identity":{"subject":"user-1","auth":"oauth2"}`)
		bodies[i] = []byte(benchEnvelope(fmt.Sprintf("m-%d", i), r, now))
	}
	var next atomic.Int64
	b.SetParallelism(32) // × GOMAXPROCS goroutines: about 64 in flight on 2 cores
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &nopResponse{h: http.Header{}}
		for pb.Next() {
			body := bodies[next.Add(1)%int64(len(bodies))]
			r, _ := http.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			w.code = 0
			s.ServeHTTP(w, r)
			if w.code != http.StatusNoContent {
				b.Errorf("status %d", w.code)
				return
			}
		}
	})
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the process's user and system CPU time so far: the
// handler's cost, where ns/op is mostly the batch's wait.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// nothingWriter stores nothing and reports every row written.
type nothingWriter struct{}

func (nothingWriter) Write(_ context.Context, b *Batch) (Result, error) {
	return Result{Inserted: len(b.Calls), Rejected: len(b.Rejects)}, nil
}

// benchEnvelope is the envelope make bench's load generator sends.
func benchEnvelope(id, data string, at time.Time) string {
	return `{"message":{"data":"` + base64.StdEncoding.EncodeToString([]byte(data)) + `","messageId":"` + id +
		`","publishTime":"` + at.Format(time.RFC3339Nano) + `"},"subscription":"projects/bench/subscriptions/s"}`
}

// nopResponse is a ResponseWriter that keeps only the status, so the
// benchmark counts the handler's allocations rather than a recorder's.
type nopResponse struct {
	h    http.Header
	code int
}

func (w *nopResponse) Header() http.Header { return w.h }
func (w *nopResponse) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return len(p), nil
}
func (w *nopResponse) WriteHeader(code int) { w.code = code }
func (w *nopResponse) Flush()               {}
