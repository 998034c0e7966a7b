// Package logging builds the JSON slog logger every function uses at its
// edges, in the shape Cloud Logging reads from stdout: "severity",
// "message" and "time" keys, so levels and messages show up as such in the
// console rather than as opaque jsonPayload fields. An error is always
// logged under the key "err" (Err), so one query finds them all.
package logging

import (
	"io"
	"log/slog"
	"os"
)

// ErrKey is the key every error is logged under.
const ErrKey = "err"

// Err is the attribute for an error: its text under ErrKey.
func Err(err error) slog.Attr {
	if err == nil {
		return slog.String(ErrKey, "")
	}
	return slog.String(ErrKey, err.Error())
}

// Stdout is the logger a deployed function uses: Info and above, to stdout,
// where Cloud Run collects it.
func Stdout() *slog.Logger { return New(os.Stdout, slog.LevelInfo) }

// New returns a JSON logger writing Cloud Logging structured entries to w.
func New(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: replace,
	}))
}

func replace(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.LevelKey:
		return slog.String("severity", severity(a.Value.Any().(slog.Level)))
	case slog.MessageKey:
		a.Key = "message"
	}
	return a
}

// severity maps slog levels onto Cloud Logging's LogSeverity names.
func severity(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARNING"
	case l >= slog.LevelInfo:
		return "INFO"
	default:
		return "DEBUG"
	}
}
