package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
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

func newServiceDSN(t testing.TB, dsn string, tweak func(*Config, *Deps)) *Service {
	t.Helper()
	cfg, err := configFrom(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	d := Deps{DB: pool}
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

// cutProxy is a TCP proxy to the database that a test can cut and restore,
// which is what a database outage looks like from the function.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
}

func newCutProxy(t testing.TB, dsn string) (*cutProxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close(); c.Close() }()
		go func() { io.Copy(c, up); up.Close(); c.Close() }()
	}
}

// cut drops every connection and refuses new ones until restore.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
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
