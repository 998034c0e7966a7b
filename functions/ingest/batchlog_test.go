package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"
)

// A burst of 10,000 deliveries makes hundreds of batches but O(1) Info
// lines: one summary per interval, the last one written at Close.
func TestBurstLogsOneInfoLinePerInterval(t *testing.T) {
	const n = 10000
	rec := &logRecorder{}
	w := &recordingWriter{}
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewService(cfg, Deps{Writer: w, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = wrapped(fmt.Sprintf("burst-%d", i), rec1(i, now), nil)
	}
	start := time.Now()
	if codes := deliverConcurrently(t, s, bodies, 64); codes[http.StatusNoContent] != n {
		t.Fatalf("answers %v, want %d × 204", codes, n)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	intervals := int(time.Since(start)/(10*time.Second)) + 1
	w.mu.Lock()
	batches := len(w.batches)
	w.mu.Unlock()
	levels := rec.levels()
	t.Logf("%d deliveries in %d batches: %d Info, %d Debug lines", n, batches, levels[slog.LevelInfo], levels[slog.LevelDebug])
	if levels[slog.LevelInfo] < 1 || levels[slog.LevelInfo] > intervals {
		t.Fatalf("%d Info lines for %d batches in %d interval(s), want 1 to %d", levels[slog.LevelInfo], batches, intervals, intervals)
	}
	if levels[slog.LevelDebug] != batches {
		t.Fatalf("%d Debug lines, want one per batch (%d)", levels[slog.LevelDebug], batches)
	}
	var deliveries, inserted int64
	for _, a := range rec.find("ingest batches") {
		deliveries += a["deliveries"].(int64)
		inserted += a["inserted"].(int64)
		if a["write_p99_ms"].(float64) < a["write_p50_ms"].(float64) {
			t.Fatalf("p99 below p50: %v", a)
		}
	}
	if deliveries != n || inserted != n {
		t.Fatalf("summaries count %d deliveries and %d inserted, want %d each", deliveries, inserted, n)
	}
	// Close again (Shutdown after Close) writes nothing more.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.levels()[slog.LevelInfo]; got != levels[slog.LevelInfo] {
		t.Fatalf("a second Close wrote %d more Info lines", got-levels[slog.LevelInfo])
	}
}

func rec1(i int, now time.Time) string {
	return rec(fmt.Sprintf("burst-r%d", i), now.Add(-time.Duration(i)*time.Millisecond))
}

// A split batch logs what its deliveries stored, one by one, not the
// failed batch's zeros.
func TestSplitBatchLogsWhatItStored(t *testing.T) {
	w := poisonWriter()
	rec := &logRecorder{}
	bl := newBatchLog(slog.New(rec), time.Hour)
	// MaxRows = the number of deliveries, MaxWait long: one batch.
	b := newBatcher(w, BatchConfig{MaxRows: 6, MaxWait: 5 * time.Second, OnBatch: bl.batch})
	for _, err := range submitOnePoison(b, 6) {
		if err != nil {
			t.Error(err)
		}
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	bl.close()
	split := rec.find("batch refused by the database; deliveries written one by one")
	if len(split) != 1 || split[0]["level"] != slog.LevelWarn || split[0]["inserted"] != int64(5) || split[0]["rejected"] != int64(1) {
		t.Fatalf("split lines %v, want one Warn with inserted=5 rejected=1", split)
	}
	sum := rec.find("ingest batches")
	if len(sum) != 1 || sum[0]["inserted"] != int64(5) || sum[0]["rejected"] != int64(1) || sum[0]["splits"] != int64(1) {
		t.Fatalf("summaries %v, want one with inserted=5 rejected=1 splits=1", sum)
	}
}

func TestBatchLogLevels(t *testing.T) {
	tests := []struct {
		name  string
		st    BatchStats
		level slog.Level
		msg   string
	}{
		{"committed", BatchStats{Result: Result{Inserted: 3}}, slog.LevelDebug, "batch committed"},
		{"quarantined input", BatchStats{Result: Result{Rejected: 1}}, slog.LevelWarn, "batch committed"},
		{"retried", BatchStats{Result: Result{Inserted: 3, Retries: 1}}, slog.LevelWarn, "batch committed"},
		{"failed", BatchStats{Err: fmt.Errorf("connection refused"), Failed: 2}, slog.LevelError, "batch failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &logRecorder{}
			bl := newBatchLog(slog.New(rec), time.Hour)
			bl.batch(tt.st)
			bl.close()
			got := rec.find(tt.msg)
			if len(got) != 1 || got[0]["level"] != tt.level {
				t.Fatalf("%q lines %v, want one at %v", tt.msg, got, tt.level)
			}
			if n := rec.levels()[slog.LevelInfo]; n != 1 {
				t.Fatalf("%d Info lines, want the summary alone", n)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	var s samples
	if s.quantile(0.5) != 0 {
		t.Fatal("empty sample has a quantile")
	}
	for i := 1; i <= 10000; i++ {
		s.add(time.Duration(i) * time.Millisecond)
	}
	if len(s.d) != maxSamples {
		t.Fatalf("kept %d samples, want %d", len(s.d), maxSamples)
	}
	// A uniform sample of 1..10,000 ms: the median near 5 s, p99 near 9.9 s.
	if p50 := s.quantile(0.5); p50 < 4500*time.Millisecond || p50 > 5500*time.Millisecond {
		t.Fatalf("p50 %v", p50)
	}
	if p99 := s.quantile(0.99); p99 < 9700*time.Millisecond {
		t.Fatalf("p99 %v", p99)
	}
}
