// The batch stage is ingest's group commit: concurrent deliveries join one
// batch, which is written in one transaction when it reaches a row, byte or
// time limit, and each delivery is answered only after its batch commits.
//
// It separates batching from writing the way promscale's ingestor does: one
// collector goroutine forms batches and keeps growing the next one while
// the flushers (a few goroutines, each one transaction at a time) are busy,
// so a slow database produces bigger batches rather than a longer queue of
// small ones.

package ingest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
}

func (d *delivery) rows() int { return len(d.Calls) + len(d.Rejects) }

var (
	// ErrQueueFull: too much is accepted but not committed (429).
	ErrQueueFull = fmt.Errorf("batch: queue full: %w", function.ErrOverloaded)
	// ErrClosed: the batcher is shutting down (503).
	ErrClosed = fmt.Errorf("batch: closed: %w", function.ErrUnavailable)
)

type pending struct {
	item    *delivery
	arrived time.Time
	done    chan error
}

// batcher is safe for concurrent use.
type batcher struct {
	cfg BatchConfig
	w   BatchWriter
	in  chan *pending
	out chan []*pending
	// busy counts the batches being written; freed wakes the collector when
	// one is done.
	busy  atomic.Int32
	freed chan struct{}

	mu         sync.Mutex
	closed     bool
	queueRows  int
	queueBytes int
	submits    sync.WaitGroup

	collector sync.WaitGroup
	flushers  sync.WaitGroup
}

// newBatcher starts a batcher writing through w.
func newBatcher(w BatchWriter, cfg BatchConfig) *batcher {
	cfg = cfg.withDefaults()
	b := &batcher{
		cfg:   cfg,
		w:     w,
		in:    make(chan *pending, 1024),
		out:   make(chan []*pending),
		freed: make(chan struct{}, 1),
	}
	b.collector.Add(1)
	go b.collect()
	for range cfg.Flushers {
		b.flushers.Add(1)
		go b.flush()
	}
	return b
}

// Submit adds item to a batch and waits until that batch has committed. An
// error means the item may or may not be stored (a timeout can race the
// commit): the caller must not acknowledge, and redelivery is safe because
// writes are idempotent.
func (b *batcher) Submit(ctx context.Context, item *delivery) error {
	if err := b.reserve(item); err != nil {
		return err
	}
	p := &pending{item: item, arrived: time.Now(), done: make(chan error, 1)}
	select {
	case b.in <- p:
		b.submits.Done()
	case <-ctx.Done():
		b.submits.Done()
		b.release(item)
		return fmt.Errorf("batch: enqueue: %w", ctx.Err())
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("batch: waiting for commit: %w", ctx.Err())
	}
}

func (b *batcher) reserve(item *delivery) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	// An item larger than the whole queue is still admitted into an empty
	// queue, or it could never be written.
	empty := b.queueRows == 0 && b.queueBytes == 0
	if !empty && (b.queueRows+item.rows() > b.cfg.QueueRows || b.queueBytes+item.Bytes > b.cfg.QueueBytes) {
		return ErrQueueFull
	}
	b.queueRows += item.rows()
	b.queueBytes += item.Bytes
	b.submits.Add(1)
	return nil
}

func (b *batcher) release(item *delivery) {
	b.mu.Lock()
	b.queueRows -= item.rows()
	b.queueBytes -= item.Bytes
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
	already := b.closed
	b.closed = true
	b.mu.Unlock()
	if !already {
		go func() {
			b.submits.Wait() // no Submit is between reserve and send
			close(b.in)
		}()
	}
	done := make(chan struct{})
	go func() {
		b.collector.Wait()
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

// collect forms batches. While every flusher is busy it keeps adding to the
// current batch up to the size limits, which is what makes group commit
// adapt to the database's speed.
func (b *batcher) collect() {
	defer b.collector.Done()
	defer close(b.out)
	var (
		batch []*pending
		rows  int
		bytes int
		timer = time.NewTimer(time.Hour)
		due   bool
	)
	timer.Stop()
	full := func() bool { return rows >= b.cfg.MaxRows || bytes >= b.cfg.MaxBytes }
	add := func(p *pending) {
		if len(batch) == 0 {
			timer.Reset(b.cfg.MaxWait)
			due = false
		}
		batch = append(batch, p)
		rows += p.item.rows()
		bytes += p.item.Bytes
	}
	in := b.in
	for {
		var out chan []*pending
		if len(batch) > 0 && (full() || in == nil || due && b.busy.Load() <= 0) {
			out = b.out
		}
		var recv chan *pending
		if !full() {
			recv = in
		}
		if in == nil && len(batch) == 0 {
			return
		}
		select {
		case p, ok := <-recv:
			if !ok {
				in = nil
				continue
			}
			add(p)
		case <-timer.C:
			due = true
		case <-b.freed:
		case out <- batch:
			b.busy.Add(1)
			timer.Stop()
			batch, rows, bytes, due = nil, 0, 0, false
		}
	}
}

func (b *batcher) flush() {
	defer b.flushers.Done()
	for batch := range b.out {
		b.write(batch)
		b.busy.Add(-1)
		select {
		case b.freed <- struct{}{}:
		default: // the collector has a wake-up pending already
		}
	}
}

func (b *batcher) write(batch []*pending) {
	start := time.Now()
	st := BatchStats{Deliveries: len(batch), Wait: start.Sub(batch[0].arrived)}
	wb := &Batch{Messages: len(batch)}
	for _, p := range batch {
		wb.Calls = append(wb.Calls, p.item.Calls...)
		wb.Rejects = append(wb.Rejects, p.item.Rejects...)
		st.Bytes += p.item.Bytes
	}
	st.Rows = len(wb.Calls) + len(wb.Rejects)
	st.Reasons = countReasons(st.Reasons, wb.Rejects)

	res, err := b.writeOnce(wb)
	if err != nil && IsDataError(err) {
		// One delivery's content broke the batch: write each delivery on its
		// own so the others are not held hostage, and quarantine the rows the
		// database refuses.
		st.Split, st.Err = true, err
		for _, p := range batch {
			r, refused, perr := b.writeAlone(p.item)
			st.add(r, perr)
			st.Reasons = countReasons(st.Reasons, refused)
			b.finish(p, perr)
		}
		st.Write = time.Since(start)
		b.report(st)
		return
	}
	st.Result, st.Write, st.Err = res, time.Since(start), err
	if err != nil {
		st.Failed = len(batch)
	}
	for _, p := range batch {
		b.finish(p, err)
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

func (b *batcher) finish(p *pending, err error) {
	b.release(p.item)
	p.done <- err
}

func (b *batcher) report(st BatchStats) {
	if b.cfg.OnBatch != nil {
		b.cfg.OnBatch(st)
	}
}
