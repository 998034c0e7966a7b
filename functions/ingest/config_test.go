package ingest

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
		check   func(Config) bool
	}{
		{"defaults", nil, "", func(c Config) bool {
			b := c.Batch
			return b.MaxRows == DefaultBatchMaxRows && b.MaxBytes == DefaultBatchMaxBytes && b.MaxWait == DefaultBatchMaxWait &&
				b.QueueRows == DefaultQueueMaxRows && b.QueueBytes == DefaultQueueMaxBytes && b.Flushers == DefaultFlushers &&
				b.WriteTimeout == DefaultWriteTimeout && c.RequestTimeout == DefaultRequestTimeout && c.MaxBodyBytes == DefaultMaxBodyBytes &&
				c.MaxFuture == DefaultMaxFuture && c.DrainTimeout == DefaultDrainTimeout && c.PushAudience == "" &&
				c.GCPercent == DefaultGCPercent && c.MemoryLimit == DefaultMemoryLimit && !c.goGC && !c.goMemLimit
		}},
		{"the runtime's own GC variables", map[string]string{"GOGC": "off", "GOMEMLIMIT": "1GiB"}, "", func(c Config) bool {
			return c.goGC && c.goMemLimit
		}},
		{"a GC percent too small", map[string]string{"INGEST_GC_PERCENT": "5"}, "INGEST_GC_PERCENT", nil},
		{"a negative memory limit", map[string]string{"INGEST_MEMORY_LIMIT": "-1"}, "INGEST_MEMORY_LIMIT", nil},
		{"tuned", map[string]string{"INGEST_BATCH_MAX_ROWS": "500", "INGEST_BATCH_MAX_WAIT": "5ms"}, "", func(c Config) bool {
			return c.Batch.MaxRows == 500 && c.Batch.MaxWait == 5*time.Millisecond
		}},
		{"values are trimmed", map[string]string{"INGEST_FLUSHERS": " 3\n", "PUSH_AUDIENCE": " https://ingest/ ", "INGEST_MAX_FUTURE": "\t2h "}, "", func(c Config) bool {
			return c.Batch.Flushers == 3 && c.PushAudience == "https://ingest/" && c.MaxFuture == 2*time.Hour
		}},
		{"bad number", map[string]string{"INGEST_BATCH_MAX_ROWS": "lots"}, "INGEST_BATCH_MAX_ROWS", nil},
		{"zero is not a size", map[string]string{"INGEST_MAX_BODY_BYTES": "0"}, "INGEST_MAX_BODY_BYTES", nil},
		{"bad duration", map[string]string{"INGEST_REQUEST_TIMEOUT": "10"}, "INGEST_REQUEST_TIMEOUT", nil},
		{"service account without audience", map[string]string{"PUSH_SERVICE_ACCOUNT": "a@b"}, "PUSH_AUDIENCE", nil},
		{"queue smaller than a batch", map[string]string{"INGEST_QUEUE_MAX_ROWS": "10"}, "INGEST_QUEUE_MAX_ROWS", nil},
		{"every error at once", map[string]string{"INGEST_FLUSHERS": "x", "INGEST_DRAIN_TIMEOUT": "soon"}, "INGEST_DRAIN_TIMEOUT", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := configFrom(func(k string) string { return tt.env[k] })
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Batch.MaxRows <= 0 || c.RequestTimeout <= 0 {
					t.Fatalf("defaults not applied: %+v", c)
				}
				if tt.check != nil && !tt.check(c) {
					t.Fatalf("config %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error naming %s", err, tt.wantErr)
			}
		})
	}
}

// TestTuneGC checks that the function's start sets the collector from
// Config, and leaves what the runtime's own GOGC and GOMEMLIMIT set.
func TestTuneGC(t *testing.T) {
	gc, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(gc); debug.SetMemoryLimit(limit) })
	for _, tc := range []struct {
		name      string
		env       map[string]string
		wantGC    int
		wantLimit int64
	}{
		{"defaults", nil, DefaultGCPercent, math.MaxInt64},
		{"set", map[string]string{"INGEST_GC_PERCENT": "300", "INGEST_MEMORY_LIMIT": "805306368"}, 300, 805306368},
		{"the runtime's own win", map[string]string{"INGEST_GC_PERCENT": "300", "INGEST_MEMORY_LIMIT": "805306368", "GOGC": "100", "GOMEMLIMIT": "off"}, 100, math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			c, err := configFrom(func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			c.TuneGC()
			if got := debug.SetGCPercent(100); got != tc.wantGC {
				t.Errorf("GC percent %d, want %d", got, tc.wantGC)
			}
			if got := debug.SetMemoryLimit(-1); got != tc.wantLimit {
				t.Errorf("memory limit %d, want %d", got, tc.wantLimit)
			}
		})
	}
}
