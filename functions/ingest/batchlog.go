package ingest

// The batch log. Under load the batch stage commits about a hundred batches
// a second; a line for each is a Cloud Logging bill and noise. Operators get
// one Info summary per interval (counts, write-time percentiles, rows per
// batch) and a line for each anomaly: Warn for a batch that retried,
// quarantined input or was split, Error for one that failed. Every other
// batch is a Debug line.

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// maxSamples bounds the write and wait times kept per interval for the
// percentiles; past it they are a uniform sample of the interval.
const maxSamples = 4096

type batchLog struct {
	log   *slog.Logger
	every time.Duration
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	mu sync.Mutex
	iv interval
}

// interval sums the batches since the last summary.
type interval struct {
	start                          time.Time
	batches, deliveries, rows      int
	bytes, maxRows                 int
	inserted, duplicates, rejected int
	failed, splits, retried        int
	writes, waits                  samples
}

// newBatchLog starts the summary ticker; close stops it and writes the last
// summary.
func newBatchLog(l *slog.Logger, every time.Duration) *batchLog {
	bl := &batchLog{log: l, every: every, stop: make(chan struct{}), done: make(chan struct{})}
	bl.iv.start = time.Now()
	go bl.run()
	return bl
}

func (bl *batchLog) run() {
	defer close(bl.done)
	t := time.NewTicker(bl.every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			bl.flush()
		case <-bl.stop:
			return
		}
	}
}

// close writes the summary of the interval in progress, so the last one
// before an instance stops is not lost. Safe to call more than once.
func (bl *batchLog) close() {
	bl.once.Do(func() {
		close(bl.stop)
		<-bl.done
		bl.flush()
	})
}

// batch is the batch stage's OnBatch.
func (bl *batchLog) batch(st BatchStats) {
	bl.mu.Lock()
	bl.iv.add(&st)
	bl.mu.Unlock()
	bl.logBatch(st)
}

func (iv *interval) add(st *BatchStats) {
	iv.batches++
	iv.deliveries += st.Deliveries
	iv.rows += st.Rows
	iv.bytes += st.Bytes
	iv.maxRows = max(iv.maxRows, st.Rows)
	iv.inserted += st.Inserted
	iv.duplicates += st.Duplicates
	iv.rejected += st.Rejected
	iv.failed += st.Failed
	if st.Split {
		iv.splits++
	}
	if st.Retries > 0 {
		iv.retried++
	}
	iv.writes.add(st.Write)
	iv.waits.add(st.Wait)
}

// logBatch writes the per-batch line. A committed batch that quarantined
// input keeps the message "batch committed" (at Warn): the log-based reject
// metric of deploy/gcp counts those lines.
func (bl *batchLog) logBatch(st BatchStats) {
	level, msg := slog.LevelDebug, "batch committed"
	switch {
	case st.Split:
		level, msg = slog.LevelWarn, "batch refused by the database; deliveries written one by one"
	case st.Err != nil:
		level, msg = slog.LevelError, "batch failed"
	case st.Rejected > 0 || st.Retries > 0:
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !bl.log.Enabled(ctx, level) {
		return
	}
	attrs := []any{
		"batch_id", st.BatchID,
		"deliveries", st.Deliveries,
		"rows", st.Rows,
		"inserted", st.Inserted,
		"duplicates", st.Duplicates,
		"rejected", st.Rejected,
		"bytes", st.Bytes,
		"wait_ms", st.Wait.Milliseconds(),
		"write_ms", st.Write.Milliseconds(),
	}
	if st.Retries > 0 {
		attrs = append(attrs, "retries", st.Retries)
	}
	if st.Failed > 0 {
		attrs = append(attrs, "failed", st.Failed)
	}
	if len(st.Reasons) > 0 {
		attrs = append(attrs, "reasons", st.Reasons)
	}
	if st.Err != nil {
		attrs = append(attrs, "err", st.Err.Error())
	}
	bl.log.Log(ctx, level, msg, attrs...)
}

// flush writes the summary of the interval and starts the next; an idle
// interval writes nothing.
func (bl *batchLog) flush() {
	bl.mu.Lock()
	iv := bl.iv
	bl.iv = interval{start: time.Now()}
	bl.mu.Unlock()
	if iv.batches == 0 {
		return
	}
	bl.log.Info("ingest batches",
		"interval_s", math.Round(time.Since(iv.start).Seconds()*10)/10,
		"batches", iv.batches,
		"deliveries", iv.deliveries,
		"rows", iv.rows,
		"inserted", iv.inserted,
		"duplicates", iv.duplicates,
		"rejected", iv.rejected,
		"failed", iv.failed,
		"splits", iv.splits,
		"retried", iv.retried,
		"bytes", iv.bytes,
		"rows_per_batch", math.Round(float64(iv.rows)/float64(iv.batches)*10)/10,
		"rows_per_batch_max", iv.maxRows,
		"write_p50_ms", ms(iv.writes.quantile(0.5)),
		"write_p99_ms", ms(iv.writes.quantile(0.99)),
		"wait_p99_ms", ms(iv.waits.quantile(0.99)),
	)
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e5) / 10 }

// samples keeps at most maxSamples durations, a uniform sample (reservoir
// sampling) of all those added.
type samples struct {
	d    []time.Duration
	seen int
}

func (s *samples) add(d time.Duration) {
	s.seen++
	if len(s.d) < maxSamples {
		s.d = append(s.d, d)
		return
	}
	if i := rand.IntN(s.seen); i < maxSamples {
		s.d[i] = d
	}
}

// quantile returns the nearest-rank q-quantile, 0 when empty.
func (s *samples) quantile(q float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	d := slices.Clone(s.d)
	slices.Sort(d)
	return d[int(math.Ceil(q*float64(len(d))))-1]
}
