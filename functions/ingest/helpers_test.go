package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

// newService starts a Service that logs in as a member of apigee_ingest (not
// the owner, not a superuser), as the deployed function does.
func newService(t testing.TB, db *testkit.DB, tweak func(*Config, *Deps)) *Service {
	t.Helper()
	_, dsn := db.Login(t, "apigee_ingest")
	return newServiceDSN(t, dsn, tweak)
}

// dsnPool is a pool of at most maxConns connections to dsn, closed at
// cleanup.
func dsnPool(tb testing.TB, dsn string, maxConns int32) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func newServiceDSN(t testing.TB, dsn string, tweak func(*Config, *Deps)) *Service {
	t.Helper()
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	d := Deps{DB: dsnPool(t, dsn, 8)}
	if tweak != nil {
		tweak(&cfg, &d)
	}
	s, err := NewService(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// rec renders one valid apigee.call.v1 record.
func rec(id string, at time.Time, extra ...string) string {
	fields := []string{
		`"schema":"apigee.call.v1"`,
		fmt.Sprintf(`"message_id":%q`, id),
		fmt.Sprintf(`"received_at":"%s"`, at.UTC().Format(time.RFC3339Nano)),
		`"organization":"acme"`, `"environment":"prod"`, `"apiproxy":"orders-v1"`,
		`"request_verb":"get"`, `"request_path":"/orders/42"`, `"response_status_code":"200"`,
		`"total_response_time":"37"`, `"tenant":"tenant-a"`,
	}
	return "{" + strings.Join(append(fields, extra...), ",") + "}"
}

// wrapped builds a Pub/Sub push envelope around data.
func wrapped(id string, data string, attrs map[string]string) string {
	env := map[string]any{
		"message": map[string]any{
			"data":        base64.StdEncoding.EncodeToString([]byte(data)),
			"messageId":   id,
			"message_id":  id,
			"publishTime": time.Now().UTC().Format(time.RFC3339Nano),
			"attributes":  attrs,
		},
		"subscription": "projects/p/subscriptions/apigee-calls",
	}
	b, _ := json.Marshal(env)
	return string(b)
}

// post delivers body to the service's HTTP handler in-process and returns
// the status code.
func post(t testing.TB, h http.Handler, body string, hdr map[string]string) int {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

func count(t testing.TB, db *testkit.DB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Admin.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// logRecorder is a slog.Handler that keeps every record, at every level.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// levels counts the records by level.
func (h *logRecorder) levels() map[slog.Level]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := map[slog.Level]int{}
	for _, r := range h.records {
		n[r.Level]++
	}
	return n
}

// find returns the attributes of every record with message msg.
func (h *logRecorder) find(msg string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, r := range h.records {
		if r.Message != msg {
			continue
		}
		attrs := map[string]any{"level": r.Level}
		r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.Any(); return true })
		out = append(out, attrs)
	}
	return out
}
