package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/record"
)

// rowBytesTarget is issue 13's bound on a raw row (heap + TOAST + indexes)
// with short paths and no user agent; it was 391 before migration 00017.
const rowBytesTarget = 250

// benchCall is a call with the fields bench-ingest's records carry
// (deploy/local/cmd/bench-ingest) and issue 13 measured: a short path, no
// user agent, no Pub/Sub metadata (which adds 25 bytes of heap).
func benchCall(run string, i int, at time.Time) Call {
	ms, tms := int32(20+i%180), int32(10+i%150)
	req, resp := int64(0), int64(1834)
	return Call{
		Record: &record.Record{
			MessageID:  fmt.Sprintf("%s-%d", run, i),
			ReceivedAt: at.UTC().Truncate(time.Millisecond), Organization: "acme", Environment: "prod",
			APIProxy: fmt.Sprintf("proxy-%d", i%40), RequestVerb: "GET", RequestPath: fmt.Sprintf("/v1/items/%d", i%997),
			ResponseStatusCode: 200, TotalResponseTime: &ms, TargetResponseTime: &tms, RequestSize: &req, ResponseSize: &resp,
			ClientIP:     netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)}),
			DeveloperApp: fmt.Sprintf("app-%d", i%40), APIProduct: "gold", Tenant: fmt.Sprintf("tenant-%d", i%7),
			Identity: record.Identity{Subject: fmt.Sprintf("user-%d", i%1000), Auth: "oauth2"},
		},
	}
}

// TestRowBytes writes ROW_BYTES_ROWS (default 20,000) calls through the
// Writer in batches of 1,000, as ingest does, and holds a raw row to the
// target; -v prints the table per index, and the same for the raw table
// before migration 00017 (its down migration), for comparison:
//
//	go test -v -run TestRowBytes ./functions/ingest/
func TestRowBytes(t *testing.T) {
	n := 20000
	if s := os.Getenv("ROW_BYTES_ROWS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("ROW_BYTES_ROWS: %v", err)
		}
	}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		before := testkit.New(t, db.Kind)
		undoRawIndexes(t, before)
		logRowBytes(t, "00016", writeBenchCalls(t, before, n))
		rb := writeBenchCalls(t, db, n)
		logRowBytes(t, "00017", rb)
		if got := rb.PerRow(rb.Total()); got > rowBytesTarget {
			t.Errorf("a raw row takes %.1f bytes, want at most %d", got, rowBytesTarget)
		}
	})
}

// writeBenchCalls writes n calls and measures the raw table.
func writeBenchCalls(t *testing.T, db *testkit.DB, n int) RowBytes {
	t.Helper()
	ctx := context.Background()
	w := NewWriter(ingestPool(t, db))
	// One UTC day (one chunk or partition) at issue 13's density of 10,000
	// calls a minute (one every 6 ms), a little out of order within a
	// batch as concurrent deliveries make them.
	day := time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour)
	rng := rand.New(rand.NewPCG(13, 1))
	for lo := 0; lo < n; lo += 1000 {
		calls := make([]Call, 0, 1000)
		for i := lo; i < min(lo+1000, n); i++ {
			calls = append(calls, benchCall("9f3a61c2", i, day.Add(time.Duration(i)*6*time.Millisecond)))
		}
		rng.Shuffle(len(calls), func(i, j int) { calls[i], calls[j] = calls[j], calls[i] })
		if _, err := w.Write(ctx, &Batch{Calls: calls, Messages: len(calls)}); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := MeasureRowBytes(ctx, db.Admin)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Rows != int64(n) {
		t.Fatalf("measured %d rows, wrote %d", rb.Rows, n)
	}
	return rb
}

func logRowBytes(t *testing.T, schema string, rb RowBytes) {
	t.Helper()
	t.Logf("schema %s, %d rows: %.1f bytes per row", schema, rb.Rows, rb.PerRow(rb.Total()))
	t.Logf("  %-26s %6.1f", "heap", rb.PerRow(rb.Heap))
	t.Logf("  %-26s %6.1f", "toast", rb.PerRow(rb.TOAST))
	for _, ix := range rb.Indexes {
		t.Logf("  %-26s %6.1f", ix.Name, rb.PerRow(ix.Bytes))
	}
}
