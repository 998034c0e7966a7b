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

	"github.com/jackc/pgx/v5/pgtype"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/copybinary"
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

// BenchmarkBatchStages is the function's per-row work on the batch path,
// without a database: one 500-record message as make bench's (2) sends it,
// taken through the stages cumulatively (each case does the ones before it
// too), plus pgx's encoding of the same COPY rows for comparison. Its
// instruction counts (README, Benchmarks, session 8) are the difference of
// a 21-iteration and a 1-iteration run under callgrind, divided by 20 × 500:
//
//	go test -c -o /tmp/ingest.test ./functions/ingest/
//	GODEBUG=asyncpreemptoff=1 GOMAXPROCS=1 valgrind --tool=callgrind \
//	  /tmp/ingest.test -test.run '^$' -test.bench 'BenchmarkBatchStages/copy$' -test.benchtime 21x
func BenchmarkBatchStages(b *testing.B) {
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewService(cfg, Deps{Writer: nothingWriter{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	const n = 500
	now := time.Now().UTC()
	var data strings.Builder
	for i := range n {
		data.WriteString(rec(fmt.Sprintf("stage-%d", i), now.Add(-time.Duration(i)*time.Second),
			fmt.Sprintf(`"target_response_time":"%d"`, 10+i%150), `"request_size":"0"`, `"response_size":"1834"`,
			fmt.Sprintf(`"client_ip":"203.0.113.%d"`, i%250), `"useragent":"okhttp/4.12.0"`,
			fmt.Sprintf(`"developer_app":"app-%d"`, i%40), `"api_product":"gold"`,
			fmt.Sprintf(`"identity":{"subject":"user-%d","auth":"oauth2"}`, i%1000)))
		data.WriteByte('\n')
	}
	body := []byte(benchEnvelope("m-1", data.String(), now))
	types := pgtype.NewMap()
	oids := make([]uint32, len(stageTypes))
	pgName := map[string]string{"integer": "int4", "bigint": "int8", "smallint": "int2", "boolean": "bool", "text[]": "_text"}
	for j, t := range stageTypes {
		if alias, ok := pgName[t]; ok {
			t = alias
		}
		dt, ok := types.TypeForName(t)
		if !ok {
			b.Fatalf("no pgx type for %s", t)
		}
		oids[j] = dt.OID
	}
	// The hash stage hashes the rows as they come (the writer sorts them by
	// message_id first, outside what this measures).
	inOrder := make([]int, n)
	for i := range inOrder {
		inOrder[i] = i
	}
	for _, upto := range []string{"decode", "parse", "values", "hash", "copy", "copy-pgx"} {
		b.Run(upto, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1<<20)
			for b.Loop() {
				m := decodePush(http.Header{}, body)
				if upto == "decode" {
					continue
				}
				d := s.toDelivery(m, len(body))
				if len(d.Calls) != n {
					b.Fatalf("%d calls, rejects %v", len(d.Calls), d.Rejects)
				}
				if upto == "parse" {
					continue
				}
				vals := rowValues(7, keyOrder(d.Calls))
				if upto == "values" {
					continue
				}
				hashRows(audit.NewHasher(7), vals, inOrder)
				switch upto {
				case "copy":
					var cw copybinary.Writer
					cw.Reset(buf)
					if err := copyRows(&cw, vals); err != nil {
						b.Fatal(err)
					}
					buf = cw.Finish()[:0]
				case "copy-pgx":
					buf = buf[:0]
					for _, row := range vals {
						for j, v := range row {
							if buf, err = types.Encode(oids[j], pgtype.BinaryFormatCode, v, buf); err != nil {
								b.Fatal(err)
							}
						}
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/row")
		})
	}
}
