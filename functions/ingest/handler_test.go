package ingest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingWriter keeps what it is asked to write, storing nothing.
type recordingWriter struct {
	mu      sync.Mutex
	batches []*Batch
}

func (w *recordingWriter) Write(_ context.Context, b *Batch) (Result, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batches = append(w.batches, b)
	return Result{Inserted: len(b.Calls), Rejected: len(b.Rejects)}, nil
}

// Deps.Writer replaces the database: the HTTP path decodes, validates and
// batches the same, and hands the writer calls carrying their Pub/Sub
// metadata and rejects carrying their reason.
func TestServiceWithInjectedWriter(t *testing.T) {
	w := &recordingWriter{}
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewService(cfg, Deps{Writer: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	now := time.Now().UTC()
	if code := post(t, s, wrapped("ps-1", rec("r1", now)+"\n"+"not json", map[string]string{"tenant": "t9"}), nil); code != http.StatusNoContent {
		t.Fatalf("status %d, want 204", code)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var calls []Call
	var rejects []Reject
	for _, b := range w.batches {
		calls = append(calls, b.Calls...)
		rejects = append(rejects, b.Rejects...)
	}
	if len(calls) != 1 || calls[0].MessageID != "r1" || calls[0].PubSubMessageID != "ps-1" || calls[0].PublishTime.IsZero() {
		t.Fatalf("calls %+v, want r1 from ps-1 with its publish time", calls)
	}
	if len(rejects) != 1 || rejects[0].Tenant != "t9" || rejects[0].RecordIndex != 1 || rejects[0].DedupeKey != "msg:ps-1:1" {
		t.Fatalf("rejects %+v, want record 1 of ps-1 for tenant t9", rejects)
	}
	if _, err := NewService(cfg, Deps{}); err == nil {
		t.Fatal("NewService without a database or a writer succeeded")
	}
}

// Each call remembers its position in the message, counting the rejects
// between, for the dedupe key of a database reject.
func TestCallsKeepTheirIndex(t *testing.T) {
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewService(cfg, Deps{Writer: &recordingWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	now := time.Now().UTC()
	data := "not json\n" + rec("r1", now) + "\n{\"schema\":1}\n" + rec("r3", now) + "\n" + rec("r4", now)
	d := s.toDelivery(message{ID: "ps-9", Data: []byte(data)}, len(data))
	var got []int
	for _, c := range d.Calls {
		got = append(got, c.index)
	}
	if fmt.Sprint(got) != "[1 3 4]" || len(d.Rejects) != 2 || d.Rejects[1].DedupeKey != "msg:ps-9:2" {
		t.Fatalf("call indexes %v, rejects %+v; want [1 3 4] and rejects 0 and 2", got, d.Rejects)
	}
}

// A delivery whose batch has not committed within INGEST_REQUEST_TIMEOUT is
// answered 503 then, not when the write ends: Pub/Sub's ack deadline is
// close behind.
func TestRequestTimeoutAnswers503(t *testing.T) {
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	cfg.RequestTimeout = 100 * time.Millisecond
	g := &gateWriter{started: make(chan int, 1), release: make(chan struct{})}
	s, err := NewService(cfg, Deps{Writer: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	defer close(g.release) // before Close, which waits for the write
	start := time.Now()
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(wrapped("t1", rec("timeout-1", time.Now()), nil)))
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { s.ServeHTTP(w, r); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer 5 s after a 100 ms request timeout")
	}
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("answered %d (Retry-After %q), want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if el := time.Since(start); el < cfg.RequestTimeout {
		t.Fatalf("answered after %v, before the timeout", el)
	}
}

// Pub/Sub keeps pushing while the instance shuts down: Shutdown waits for
// the requests in flight while new ones arrive (and are refused, 503).
// With a sync.WaitGroup this panicked now and then (once in CI: "WaitGroup
// is reused before previous Wait has returned"); each round here races
// arrivals against the wait.
func TestShutdownWhileDeliveriesArrive(t *testing.T) {
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	body := wrapped("s1", rec("shutdown-1", time.Now()), nil)
	const rounds, senders = 200, 8
	codes := map[int]int{}
	for round := range rounds {
		s, err := NewService(cfg, Deps{Writer: &recordingWriter{}})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		got := make(chan map[int]int, senders)
		for range senders {
			go func() {
				c := map[int]int{}
				for {
					select {
					case <-stop:
						got <- c
						return
					default:
						c[post(t, s, body, nil)]++
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = s.Shutdown(ctx)
		cancel()
		close(stop)
		for range senders {
			for k, v := range <-got {
				codes[k] += v
			}
		}
		if err != nil {
			t.Fatalf("round %d: Shutdown: %v", round, err)
		}
	}
	t.Logf("%d shutdowns under %d senders: answers %v", rounds, senders, codes)
	for code := range codes {
		if code != http.StatusNoContent && code != http.StatusServiceUnavailable {
			t.Fatalf("answers %v: want only 204 (stored) and 503 (refused after Close)", codes)
		}
	}
	if codes[http.StatusServiceUnavailable] == 0 {
		t.Fatalf("answers %v: no delivery arrived after Close, so the race was not run", codes)
	}
}
