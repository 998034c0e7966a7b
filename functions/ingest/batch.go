// The batch stage is ingest's group commit: concurrent deliveries join one
// batch, which is written in one transaction when it reaches a row, byte or
// time limit, and each delivery is answered only after its batch commits.
//
// It separates batching from writing the way promscale's ingestor does:
// deliveries join the forming batch, which keeps growing while the flushers
// (a few goroutines, each one transaction at a time) are busy, so a slow
// database produces bigger batches rather than a longer queue of small
// ones.

package ingest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"apigee-timescale/shared/function"
)

// BatchWriter writes one batch in one transaction; *Writer is one.
type BatchWriter interface {
	Write(ctx context.Context, b *Batch) (Result, error)
}

// DefaultLogInterval: one Info line per 10 s, however many batches.
const DefaultLogInterval = 10 * time.Second

// BatchConfig bounds batches and the queue. Zero fields take the defaults
// (the Default* constants of config.go).
type BatchConfig struct {
	// MaxRows flushes a batch once it holds this many rows (calls + rejects).
	// Default 1000.
	MaxRows int
	// MaxBytes flushes a batch once its deliveries hold this many bytes of
	// input. Default 4 MiB.
	MaxBytes int
	// MaxWait is how long a batch waits for more deliveries after its first
	// one before it is handed to a free flusher, however small it is.
	// Default 5 ms. While every flusher is busy the batch keeps growing (up
	// to MaxRows/MaxBytes) whatever its age, so under load batch size
	// follows the database's speed and MaxWait only sets the latency floor
	// when the database keeps up.
	MaxWait time.Duration
	// QueueRows and QueueBytes bound what is accepted but not yet committed;
	// past them Submit fails at once with ErrQueueFull, so memory stays
	// bounded and Pub/Sub slows down. Defaults 20,000 rows and 64 MiB.
	QueueRows  int
	QueueBytes int
	// Flushers is how many batches may be written at once. Default 2. A
	// batch that is not full waits for every write in progress to end
	// (growing meanwhile) rather than start a second one beside it: its
	// transaction's fixed cost is then shared by more rows. Only a full
	// batch is written beside another, when one flusher cannot keep up.
	Flushers int
	// WriteTimeout bounds one batch's transaction. Default 20 s.
	WriteTimeout time.Duration
	// LogInterval is how often the batch log's Info summary is written;
	// DefaultLogInterval when zero.
	LogInterval time.Duration
	// OnBatch, when set, is called after every batch attempt (for logging
	// at the edge).
	OnBatch func(BatchStats)
}

func (c BatchConfig) withDefaults() BatchConfig {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxRows, DefaultBatchMaxRows)
	def(&c.MaxBytes, DefaultBatchMaxBytes)
	def(&c.QueueRows, DefaultQueueMaxRows)
	def(&c.QueueBytes, DefaultQueueMaxBytes)
	def(&c.Flushers, DefaultFlushers)
	if c.MaxWait <= 0 {
		c.MaxWait = DefaultBatchMaxWait
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.LogInterval <= 0 {
		c.LogInterval = DefaultLogInterval
	}
	return c
}

// BatchStats describes one written (or failed) batch.
type BatchStats struct {
	// Result is the transaction's; for a split batch, the sum over its
	// deliveries' transactions (BatchID and SHA256 are then zero).
	Result
	Deliveries int
	Rows       int
	Bytes      int
	// Wait is how long the oldest delivery waited before the write began.
	Wait time.Duration
	// Write is how long the transaction took (all of them, when split).
	Write time.Duration
	// Split is true when the batch failed on its content and its deliveries
	// were written one by one; Err is then the batch's error, and Failed
	// counts the deliveries that could not be stored even alone.
	Split  bool
	Failed int
	Err    error
	// Reasons counts the batch's rejects by reason.
	Reasons map[string]int
}

// add sums the result of one delivery written alone into a split batch.
func (st *BatchStats) add(r Result, err error) {
	if err != nil {
		st.Failed++
		return
	}
	st.Inserted += r.Inserted
	st.Duplicates += r.Duplicates
	st.Rejected += r.Rejected
	st.Retries += r.Retries
	st.NewDay = st.NewDay || r.NewDay
	if r.Inserted > 0 && (st.MinReceived.IsZero() || r.MinReceived.Before(st.MinReceived)) {
		st.MinReceived = r.MinReceived
	}
	if r.MaxReceived.After(st.MaxReceived) {
		st.MaxReceived = r.MaxReceived
	}
}

// delivery is one delivery's share of a batch.
type delivery struct {
	Calls   []Call
	Rejects []Reject
	// Bytes is the delivery's input size, counted against MaxBytes and
	// QueueBytes.
	Bytes int
	// src keys and dates the rejects the database may yet cause.
	src source
	// err is the delivery's outcome, set by the flusher before it closes
	// the batch's done.
	err error
	// one holds the Calls of a single-record delivery, the common push
	// case, so they take no allocation of their own.
	one [1]Call
}

func (d *delivery) rows() int { return len(d.Calls) + len(d.Rejects) }

var (
	// ErrQueueFull: too much is accepted but not committed (429).
	ErrQueueFull = fmt.Errorf("batch: queue full: %w", function.ErrOverloaded)
	// ErrClosed: the batcher is shutting down (503).
	ErrClosed = fmt.Errorf("batch: closed: %w", function.ErrUnavailable)
)

// flight is one batch: its deliveries in arrival order and, once written,
// their answers. One channel per batch, closed once, wakes every delivery
// waiting on it: a delivery costs no channel of its own and no wake-up of
// a goroutine between its handler and the flusher.
type flight struct {
	items       []*delivery
	rows, bytes int
	// first is when the first delivery joined.
	first time.Time
	done  chan struct{}
}

// batcher is safe for concurrent use. Submit adds to the forming batch
// under mu; a flusher takes a batch when it is full, or when it is due
// (MaxWait after its first delivery) and no other write is in progress,
// which is what makes group commit adapt to the database's speed.
type batcher struct {
	cfg BatchConfig
	w   BatchWriter

	mu sync.Mutex
	// work wakes a flusher: a batch is ready, due, or the batcher closed.
	work    sync.Cond
	forming *flight
	// ready are full batches not yet taken by a flusher, oldest first.
	ready []*flight
	// due: forming's MaxWait has passed. busy counts batches being written.
	due        bool
	busy       int
	closed     bool
	queueRows  int
	queueBytes int
	// timer marks forming due, MaxWait after its first delivery.
	timer *time.Timer

	flushers sync.WaitGroup
}

// newBatcher starts a batcher writing through w.
func newBatcher(w BatchWriter, cfg BatchConfig) *batcher {
	cfg = cfg.withDefaults()
	b := &batcher{cfg: cfg, w: w}
	b.work.L = &b.mu
	b.timer = time.AfterFunc(time.Hour, b.expire)
	b.timer.Stop()
	for range cfg.Flushers {
		b.flushers.Add(1)
		go b.flush()
	}
	return b
}

// Submit adds item to a batch and waits until that batch has committed,
// or ctx ends. An error means the item may or may not be stored (a timeout
// can race the commit): the caller must not acknowledge, and redelivery is
// safe because writes are idempotent.
func (b *batcher) Submit(ctx context.Context, item *delivery) error {
	return b.SubmitWithin(ctx, item, 0)
}

// SubmitWithin is Submit that also gives up after wait (none when zero):
// a timer, where a context.WithTimeout per delivery costs an allocation
// more, a child registered with the parent context and a channel.
func (b *batcher) SubmitWithin(ctx context.Context, item *delivery, wait time.Duration) error {
	f, err := b.enqueue(item)
	if err != nil {
		return err
	}
	var expired <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-f.done:
		return item.err
	case <-ctx.Done():
		return fmt.Errorf("batch: waiting for commit: %w", ctx.Err())
	case <-expired:
		return fmt.Errorf("batch: waiting for commit: %w", context.DeadlineExceeded)
	}
}

// enqueue reserves item's share of the queue and adds it to the forming
// batch, which it hands to the flushers once full.
func (b *batcher) enqueue(item *delivery) (*flight, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	// An item larger than the whole queue is still admitted into an empty
	// queue, or it could never be written.
	empty := b.queueRows == 0 && b.queueBytes == 0
	if !empty && (b.queueRows+item.rows() > b.cfg.QueueRows || b.queueBytes+item.Bytes > b.cfg.QueueBytes) {
		return nil, ErrQueueFull
	}
	b.queueRows += item.rows()
	b.queueBytes += item.Bytes
	f := b.forming
	if f == nil {
		f = &flight{first: time.Now(), done: make(chan struct{})}
		b.forming, b.due = f, false
		b.timer.Reset(b.cfg.MaxWait)
	}
	f.items = append(f.items, item)
	f.rows += item.rows()
	f.bytes += item.Bytes
	if f.rows >= b.cfg.MaxRows || f.bytes >= b.cfg.MaxBytes {
		b.ready = append(b.ready, f)
		b.forming = nil
		b.timer.Stop()
		b.work.Signal()
	}
	return f, nil
}

// expire marks the forming batch due. A late firing meant for a batch
// already taken finds a younger one and leaves it: the Reset that batch
// made fires again in time.
func (b *batcher) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f := b.forming; f != nil && time.Since(f.first) >= b.cfg.MaxWait {
		b.due = true
		if b.busy == 0 {
			b.work.Signal()
		}
	}
}

func (b *batcher) release(rows, bytes int) {
	b.mu.Lock()
	b.queueRows -= rows
	b.queueBytes -= bytes
	b.mu.Unlock()
}

// Queued reports the rows and bytes accepted but not yet committed.
func (b *batcher) Queued() (rows, bytes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queueRows, b.queueBytes
}

// Close stops accepting deliveries, writes what is queued and waits for the
// flushers, or until ctx ends.
func (b *batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	b.work.Broadcast()
	b.mu.Unlock()
	done := make(chan struct{})
	go func() {
		b.flushers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("batch: close: %w", ctx.Err())
	}
}

func (b *batcher) flush() {
	defer b.flushers.Done()
	for {
		f := b.next()
		if f == nil {
			return
		}
		b.write(f)
		b.mu.Lock()
		b.busy--
		b.mu.Unlock()
	}
}

// next waits for a batch to write: a full one at once, the forming one
// when it is due and no other write is in progress (a batch that is not
// full grows meanwhile rather than pay a transaction of its own), or
// whatever is left once closed. Nil: closed and nothing is left.
func (b *batcher) next() *flight {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if len(b.ready) > 0 {
			f := b.ready[0]
			b.ready[0] = nil
			b.ready = b.ready[1:]
			b.busy++
			return f
		}
		if f := b.forming; f != nil && (b.closed || b.due && b.busy == 0) {
			b.forming, b.due = nil, false
			b.timer.Stop()
			b.busy++
			return f
		}
		if b.closed {
			return nil
		}
		b.work.Wait()
	}
}

func (b *batcher) write(f *flight) {
	defer func() {
		// The queue is released before the answers, so a delivery that has
		// its answer finds its share gone.
		b.release(f.rows, f.bytes)
		close(f.done)
	}()
	start := time.Now()
	st := BatchStats{Deliveries: len(f.items), Wait: start.Sub(f.first)}
	wb := &Batch{Messages: len(f.items)}
	if len(f.items) > 0 {
		wb.Calls = make([]Call, 0, f.rows)
	}
	for _, d := range f.items {
		wb.Calls = append(wb.Calls, d.Calls...)
		wb.Rejects = append(wb.Rejects, d.Rejects...)
		st.Bytes += d.Bytes
	}
	st.Rows = len(wb.Calls) + len(wb.Rejects)
	st.Reasons = countReasons(st.Reasons, wb.Rejects)

	res, err := b.writeOnce(wb)
	if err != nil && IsDataError(err) {
		// One delivery's content broke the batch: write each delivery on its
		// own so the others are not held hostage, and quarantine the rows the
		// database refuses.
		st.Split, st.Err = true, err
		for _, d := range f.items {
			r, refused, derr := b.writeAlone(d)
			st.add(r, derr)
			st.Reasons = countReasons(st.Reasons, refused)
			d.err = derr // its Submit reads it once done is closed
		}
		st.Write = time.Since(start)
		b.report(st)
		return
	}
	st.Result, st.Write, st.Err = res, time.Since(start), err
	if err != nil {
		st.Failed = len(f.items)
	}
	for _, d := range f.items {
		d.err = err
	}
	b.report(st)
}

func countReasons(m map[string]int, rejects []Reject) map[string]int {
	for i := range rejects {
		if m == nil {
			m = map[string]int{}
		}
		m[rejects[i].Reason]++
	}
	return m
}

func (b *batcher) writeOnce(wb *Batch) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.WriteTimeout)
	defer cancel()
	return b.w.Write(ctx, wb)
}

// writeAlone writes one delivery; if the database refuses its rows, they are
// quarantined with the database's reason instead (and returned as refused),
// so the delivery can still be acknowledged without losing anything.
func (b *batcher) writeAlone(d *delivery) (Result, []Reject, error) {
	res, err := b.writeOnce(&Batch{Calls: d.Calls, Rejects: d.Rejects, Messages: 1})
	if err == nil || !IsDataError(err) {
		return res, nil, err
	}
	refused := make([]Reject, len(d.Calls))
	for i := range d.Calls {
		refused[i] = d.src.dbRejected(&d.Calls[i], err)
	}
	res, err = b.writeOnce(&Batch{Rejects: append(slices.Clip(d.Rejects), refused...), Messages: 1})
	return res, refused, err
}

func (b *batcher) report(st BatchStats) {
	if b.cfg.OnBatch != nil {
		b.cfg.OnBatch(st)
	}
}
