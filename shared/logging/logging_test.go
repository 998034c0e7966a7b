package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
)

func TestCloudLoggingShape(t *testing.T) {
	tests := []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelDebug, "DEBUG"},
		{slog.LevelInfo, "INFO"},
		{slog.LevelWarn, "WARNING"},
		{slog.LevelError, "ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			var buf bytes.Buffer
			New(&buf, slog.LevelDebug).Log(context.Background(), tt.level, "batch written", "rows", 3)
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("not JSON: %q", buf.String())
			}
			if got["severity"] != tt.want || got["message"] != "batch written" || got["rows"] != 3.0 {
				t.Fatalf("entry %v: want severity %s, message and rows", got, tt.want)
			}
			if _, ok := got["level"]; ok {
				t.Fatalf("entry still has slog's level key: %v", got)
			}
		})
	}
}

func TestErrKey(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"error", errTest("boom"), "boom"},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			New(&buf, slog.LevelInfo).Error("failed", Err(tt.err))
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("not JSON: %q", buf.String())
			}
			if got["err"] != tt.want {
				t.Fatalf("entry %v: want err %q", got, tt.want)
			}
		})
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
