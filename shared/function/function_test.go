package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/pushauth"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func call(t testing.TB, h http.Handler, method string) (int, map[string]string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, "/", nil))
	var body map[string]string
	if w.Body.Len() > 0 {
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body.String())
		}
	}
	return w.Code, body
}

func TestFailedStartIsRetried(t *testing.T) {
	var starts atomic.Int32
	fail := true
	l := &Lazy[string]{Name: "probe", Log: discard(), Start: func(context.Context, *slog.Logger) (string, error) {
		starts.Add(1)
		if fail {
			return "", errors.New("probe config: X must be set")
		}
		return "ready", nil
	}}
	h := l.HTTP(func(v string, w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": v})
	})

	code, body := call(t, h, http.MethodPost)
	if code != http.StatusInternalServerError || body["status"] != "error" || body["error"] != "probe could not start; see the logs" {
		t.Fatalf("failed start answered %d %v, want 500 with the default JSON body", code, body)
	}
	fail = false
	for range 3 {
		if code, body := call(t, h, http.MethodPost); code != http.StatusOK || body["status"] != "ready" {
			t.Fatalf("after the retry: %d %v, want 200 ready", code, body)
		}
	}
	if n := starts.Load(); n != 2 {
		t.Fatalf("started %d times, want 2 (once failed, once for good)", n)
	}
}

func TestStartFailedBodyAndStatus(t *testing.T) {
	l := &Lazy[int]{Name: "probe", Log: discard(),
		Start: func(context.Context, *slog.Logger) (int, error) {
			return 0, fmt.Errorf("probe: %w: secret manager down", ErrUnavailable)
		},
		StartFailed: func(err error) any { return map[string]string{"status": "error", "error": err.Error()} },
	}
	code, body := call(t, l.HTTP(func(int, http.ResponseWriter, *http.Request) { t.Fatal("served without a start") }), http.MethodGet)
	if code != http.StatusServiceUnavailable || body["error"] != "probe: unavailable: secret manager down" {
		t.Fatalf("got %d %v, want 503 with the function's own body", code, body)
	}
}

// The start is not tied to the request that triggered it: what it opens
// outlives the request, so a caller that hangs up does not fail the start.
func TestStartOutlivesTheRequest(t *testing.T) {
	var startErr error
	var deadline time.Time
	l := &Lazy[int]{Name: "probe", Log: discard(), Start: func(ctx context.Context, _ *slog.Logger) (int, error) {
		startErr = ctx.Err()
		deadline, _ = ctx.Deadline()
		return 1, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Get(ctx); err != nil {
		t.Fatal(err)
	}
	if startErr != nil {
		t.Fatalf("the start saw the request's cancellation: %v", startErr)
	}
	if deadline.IsZero() || time.Until(deadline) > StartTimeout {
		t.Fatalf("start deadline %v, want one at most StartTimeout away", deadline)
	}
}

func TestMethodsAreCheckedBeforeStarting(t *testing.T) {
	l := &Lazy[int]{Name: "probe", Log: discard(), Methods: []string{http.MethodGet, http.MethodPost},
		Start: func(context.Context, *slog.Logger) (int, error) {
			t.Fatal("started for a refused method")
			return 0, nil
		}}
	w := httptest.NewRecorder()
	l.HTTP(func(int, http.ResponseWriter, *http.Request) {})(w, httptest.NewRequest(http.MethodPut, "/", nil))
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, POST" || !json.Valid(w.Body.Bytes()) {
		t.Fatalf("PUT answered %d, Allow %q, body %q", w.Code, w.Header().Get("Allow"), w.Body.String())
	}
}

func TestStatusFor(t *testing.T) {
	keys := fmt.Errorf("%w: %w: cannot verify signature", pushauth.ErrUnauthenticated, pushauth.ErrKeysUnavailable)
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, http.StatusOK},
		{"signing keys unavailable", keys, http.StatusServiceUnavailable},
		{"signing keys unavailable, wrapped again", fmt.Errorf("rotate: %w", keys), http.StatusServiceUnavailable},
		{"unauthenticated", fmt.Errorf("%w: token expired", pushauth.ErrUnauthenticated), http.StatusUnauthorized},
		{"bad request", fmt.Errorf("read body: %w", ErrBadRequest), http.StatusBadRequest},
		{"overloaded", fmt.Errorf("ingest: %w: queue full", ErrOverloaded), http.StatusTooManyRequests},
		{"unavailable", fmt.Errorf("ingest: %w: %w", ErrUnavailable, context.DeadlineExceeded), http.StatusServiceUnavailable},
		{"joined: the first class wins by precedence", errors.Join(ErrOverloaded, ErrBadRequest), http.StatusBadRequest},
		{"unclassified", errors.New("rollup: refresh: boom"), http.StatusInternalServerError},
		{"a bare deadline is not classified", context.DeadlineExceeded, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StatusFor(tt.err); got != tt.want {
				t.Fatalf("StatusFor(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	w := httptest.NewRecorder()
	WriteJSON(w, http.StatusTeapot, map[string]int{"n": 1})
	if w.Code != http.StatusTeapot || w.Header().Get("Content-Type") != "application/json" || w.Body.String() != "{\"n\":1}\n" {
		t.Fatalf("got %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
}

// resetDrains forgets every registration, and restores afterDrain, when
// the test ends.
func resetDrains(t *testing.T) {
	t.Helper()
	after := afterDrain
	clear := func() {
		drains.Lock()
		drains.fns, drains.byMain, drains.watching = nil, false, false
		drains.Unlock()
		afterDrain = after
	}
	clear()
	t.Cleanup(clear)
}

func drainable(drained *atomic.Int32) *Lazy[int] {
	return &Lazy[int]{Name: "probe", Log: discard(),
		Start: func(context.Context, *slog.Logger) (int, error) { return 1, nil },
		Drain: func(int) error { drained.Add(1); return nil },
	}
}

// Outside Main (the platform's generated main), SIGTERM drains every
// started function, and only then is the signal handed back.
func TestSIGTERMDrainsWithoutMain(t *testing.T) {
	resetDrains(t)
	var drained atomic.Int32
	handed := make(chan os.Signal, 1)
	afterDrain = func(sig os.Signal) { handed <- sig }
	l := drainable(&drained)
	if _, err := l.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case sig := <-handed:
		if sig != syscall.SIGTERM || drained.Load() != 1 {
			t.Fatalf("handed back %v after %d drains, want SIGTERM after 1", sig, drained.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not drain")
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// Main serves the target at "/", and on SIGTERM drains and returns rather
// than exiting: the command's main decides the exit status.
func TestMainDrainsAndReturns(t *testing.T) {
	resetDrains(t)
	afterDrain = func(os.Signal) { t.Error("Main's drain handed the signal back") }
	var drained atomic.Int32
	l := drainable(&drained)
	functions.HTTP("MainProbe", l.HTTP(func(v int, w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]int{"v": v})
	}))
	port := freePort(t)
	t.Setenv("PORT", port)
	t.Setenv("FUNCTION_TARGET", "")
	done := make(chan error, 1)
	go func() { done <- Main("MainProbe") }()

	var resp *http.Response
	var err error
	for range 100 {
		if resp, err = http.Get("http://127.0.0.1:" + port + "/"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Main never served: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "{\"v\":1}\n" {
		t.Fatalf("served %d %q", resp.StatusCode, b)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil || drained.Load() != 1 {
			t.Fatalf("Main returned %v after %d drains, want nil after 1", err, drained.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Main did not return after SIGTERM")
	}
}
