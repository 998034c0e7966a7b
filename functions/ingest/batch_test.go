package ingest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/shared/record"
)

// fakeWriter records batches; fail decides per batch whether to fail.
type fakeWriter struct {
	mu      sync.Mutex
	batches []*Batch
	delay   time.Duration
	fail    func(*Batch) error
}

func (f *fakeWriter) Write(ctx context.Context, b *Batch) (Result, error) {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if f.fail != nil {
		if err := f.fail(b); err != nil {
			return Result{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, b)
	return Result{Inserted: len(b.Calls), Rejected: len(b.Rejects)}, nil
}

func (f *fakeWriter) stored() (batches, calls, rejects int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		calls += len(b.Calls)
		rejects += len(b.Rejects)
	}
	return len(f.batches), calls, rejects
}

func testDelivery(id string) *delivery {
	return &delivery{Calls: []Call{{Record: &record.Record{MessageID: id}}}, Bytes: 100, src: source{messageID: "ps-" + id}}
}

func submitAll(t *testing.T, b *batcher, n int) []error {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.Submit(context.Background(), testDelivery("m"))
		}()
	}
	wg.Wait()
	return errs
}

func TestGroupCommit(t *testing.T) {
	tests := []struct {
		name        string
		cfg         BatchConfig
		n           int
		maxBatches  int
		wantBatches int // exact when > 0
	}{
		{"concurrent deliveries share batches", BatchConfig{MaxWait: 50 * time.Millisecond, Flushers: 1}, 200, 10, 0},
		{"row limit splits batches", BatchConfig{MaxRows: 10, MaxWait: time.Second, Flushers: 1}, 100, 0, 10},
		{"byte limit splits batches", BatchConfig{MaxBytes: 1000, MaxWait: time.Second, Flushers: 1}, 100, 0, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &fakeWriter{delay: 5 * time.Millisecond}
			b := newBatcher(w, tt.cfg)
			defer b.Close(context.Background())
			for _, err := range submitAll(t, b, tt.n) {
				if err != nil {
					t.Fatal(err)
				}
			}
			batches, calls, _ := w.stored()
			if calls != tt.n {
				t.Fatalf("stored %d calls, want %d", calls, tt.n)
			}
			if tt.maxBatches > 0 && batches > tt.maxBatches {
				t.Fatalf("%d batches for %d concurrent deliveries, want at most %d", batches, tt.n, tt.maxBatches)
			}
			if tt.wantBatches > 0 && batches != tt.wantBatches {
				t.Fatalf("%d batches, want %d", batches, tt.wantBatches)
			}
			if rows, bytes := b.Queued(); rows != 0 || bytes != 0 {
				t.Fatalf("queue not released: %d rows, %d bytes", rows, bytes)
			}
		})
	}
}

func TestSubmitAnswersOnlyAfterCommit(t *testing.T) {
	w := &fakeWriter{delay: 100 * time.Millisecond}
	b := newBatcher(w, BatchConfig{MaxWait: time.Millisecond})
	defer b.Close(context.Background())
	start := time.Now()
	if err := b.Submit(context.Background(), testDelivery("a")); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Fatal("Submit returned before the write finished")
	}
	if _, calls, _ := w.stored(); calls != 1 {
		t.Fatalf("%d calls stored", calls)
	}
}

func TestQueueFull(t *testing.T) {
	w := &fakeWriter{delay: 300 * time.Millisecond}
	b := newBatcher(w, BatchConfig{MaxRows: 1, QueueRows: 5, MaxWait: time.Millisecond, Flushers: 1})
	defer b.Close(context.Background())
	errs := submitAll(t, b, 20)
	full := 0
	for _, err := range errs {
		if errors.Is(err, ErrQueueFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if full == 0 || full == 20 {
		t.Fatalf("%d of 20 refused as queue full, want some but not all", full)
	}
	if _, calls, _ := w.stored(); calls != 20-full {
		t.Fatalf("stored %d calls, want %d", calls, 20-full)
	}
}

func TestWriteErrorFailsEveryDelivery(t *testing.T) {
	down := errors.New("connection refused")
	w := &fakeWriter{fail: func(*Batch) error { return down }}
	b := newBatcher(w, BatchConfig{MaxWait: 20 * time.Millisecond})
	defer b.Close(context.Background())
	for _, err := range submitAll(t, b, 10) {
		if !errors.Is(err, down) {
			t.Fatalf("got %v, want the write error", err)
		}
	}
}

// poisonWriter refuses, as the database would a CHECK violation, every
// batch that holds the message "poison".
func poisonWriter() *fakeWriter {
	dataErr := &pgconn.PgError{Code: pgerrcode.CheckViolation, Message: "violates check constraint", TableName: "api_calls", ConstraintName: "api_calls_message_id_check"}
	return &fakeWriter{fail: func(b *Batch) error {
		for _, c := range b.Calls {
			if c.MessageID == "poison" {
				return dataErr
			}
		}
		return nil
	}}
}

// submitOnePoison submits "poison" and n-1 "good" deliveries at once and
// returns each Submit's answer.
func submitOnePoison(b *batcher, n int) []error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "good"
			if i == 0 {
				id = "poison"
			}
			errs[i] = b.Submit(context.Background(), testDelivery(id))
		}()
	}
	wg.Wait()
	return errs
}

func TestDataErrorIsolatesTheCulprit(t *testing.T) {
	w := poisonWriter()
	b := newBatcher(w, BatchConfig{MaxWait: 50 * time.Millisecond})
	defer b.Close(context.Background())
	errs := submitOnePoison(b, 6)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("delivery %d: %v (every delivery must be stored or quarantined)", i, err)
		}
	}
	_, calls, rejects := w.stored()
	if calls != 5 || rejects != 1 {
		t.Fatalf("stored %d calls and %d rejects, want 5 and 1", calls, rejects)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sb := range w.batches {
		for _, r := range sb.Rejects {
			if r.Reason != ReasonDBRejected || len(r.Payload) == 0 {
				t.Fatalf("quarantined %+v, want reason %s with the record", r, ReasonDBRejected)
			}
			// The same key as any other reject of that message and position,
			// so a redelivery is quarantined once.
			if r.DedupeKey != "msg:ps-poison:0" || r.RecordIndex != 0 {
				t.Fatalf("quarantined as %q (record %d), want msg:ps-poison:0", r.DedupeKey, r.RecordIndex)
			}
		}
	}
}

func TestCloseDrainsThenRefuses(t *testing.T) {
	w := &fakeWriter{delay: 50 * time.Millisecond}
	b := newBatcher(w, BatchConfig{MaxWait: 200 * time.Millisecond})
	var wg sync.WaitGroup
	errs := make([]error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = b.Submit(context.Background(), testDelivery("x")) }()
	}
	time.Sleep(20 * time.Millisecond) // let them queue
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrClosed):
			t.Fatalf("unexpected %v", err)
		}
	}
	if _, calls, _ := w.stored(); calls != ok {
		t.Fatalf("%d acknowledged but %d stored", ok, calls)
	}
	if ok == 0 {
		t.Fatal("nothing queued before Close was written")
	}
	if err := b.Submit(context.Background(), testDelivery("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// gateWriter holds every Write until release is closed, counting the
// writes begun.
type gateWriter struct {
	started chan int // the rows of each write begun
	release chan struct{}
}

func (g *gateWriter) Write(_ context.Context, b *Batch) (Result, error) {
	g.started <- len(b.Calls)
	<-g.release
	return Result{Inserted: len(b.Calls)}, nil
}

// TestSecondFlusherOnlyForFullBatches: while one batch is being written, a
// batch that is due but not full keeps growing instead of starting a
// second transaction beside it; a full one starts at once.
func TestSecondFlusherOnlyForFullBatches(t *testing.T) {
	g := &gateWriter{started: make(chan int, 10), release: make(chan struct{})}
	b := newBatcher(g, BatchConfig{MaxRows: 10, MaxWait: time.Millisecond, Flushers: 2})
	defer b.Close(context.Background())
	defer close(g.release) // before Close, which waits for the writes
	submit := func(n int) {
		for range n {
			go b.Submit(context.Background(), testDelivery("m")) //nolint:errcheck // counted by the writer
		}
	}
	submit(1)
	if rows := <-g.started; rows != 1 {
		t.Fatalf("first write has %d rows, want 1", rows)
	}
	submit(5)
	select {
	case rows := <-g.started:
		t.Fatalf("a %d-row batch, not full, started beside the first write", rows)
	case <-time.After(50 * time.Millisecond): // 50 × MaxWait
	}
	submit(5)
	select {
	case rows := <-g.started:
		if rows != 10 {
			t.Fatalf("second write has %d rows, want the 10 of a full batch", rows)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a full batch did not start beside the first write")
	}
}
