// Package function is the one way the three functions are wrapped: a Lazy
// builds a function's dependencies on its first request (and again on the
// next request if that failed), StatusFor turns an error into the HTTP
// status every function answers it with, WriteJSON writes the answers, and
// SIGTERM drains what was started (Main, or the platform's own main).
//
// A function's package then only says what to build and how to serve:
//
//	var rollup = &function.Lazy[*Runner]{Name: "rollup", Start: start}
//
//	func init() { functions.HTTP("Rollup", rollup.HTTP(serve)) }
package function

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"apigee-timescale/shared/logging"
)

// StartTimeout bounds one attempt to build a function's dependencies.
const StartTimeout = 30 * time.Second

// Lazy holds what a function builds on its first request rather than at
// start-up, so that a cold start answers (with a JSON error) even when the
// configuration or a dependency is broken. A failed start is not kept: the
// next request tries again, so a dependency briefly unreachable at cold
// start does not brick the instance.
type Lazy[T any] struct {
	// Name prefixes log messages ("ingest: start failed").
	Name string
	// Log defaults to logging.Stdout(); Start gets it too.
	Log *slog.Logger
	// Start builds the dependencies. Its context is not the request's: what
	// it opens outlives the request; it is bounded by StartTimeout.
	Start func(ctx context.Context, log *slog.Logger) (T, error)
	// Drain, when set, is called once on SIGTERM for a started T, so that
	// work accepted but not finished completes before the process exits.
	Drain func(T) error
	// Methods, when set, are the only request methods HTTP accepts; others
	// are answered 405 before anything is started.
	Methods []string
	// StartFailed returns the JSON body answered when Start fails. The
	// default names the function, not the error (which may quote values):
	// the details go to the log.
	StartFailed func(err error) any

	once    sync.Once
	mu      sync.Mutex
	v       T
	started bool
}

func (l *Lazy[T]) init() {
	l.once.Do(func() {
		if l.Log == nil {
			l.Log = logging.Stdout()
		}
		if l.StartFailed == nil {
			l.StartFailed = func(error) any {
				return map[string]string{"status": "error", "error": l.Name + " could not start; see the logs"}
			}
		}
	})
}

// Get returns the started dependencies, starting them if need be. A failed
// start is logged and returned, and retried by the next Get.
func (l *Lazy[T]) Get(ctx context.Context) (T, error) {
	l.init()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return l.v, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), StartTimeout)
	defer cancel()
	v, err := l.Start(ctx, l.Log)
	if err != nil {
		l.Log.Error(l.Name+": start failed; retried on the next request", logging.Err(err))
		var zero T
		return zero, err
	}
	l.v, l.started = v, true
	if l.Drain != nil {
		onSIGTERM(func() error { return l.drain(v) })
	}
	return v, nil
}

func (l *Lazy[T]) drain(v T) error {
	l.Log.Info(l.Name + ": draining before exit")
	if err := l.Drain(v); err != nil {
		l.Log.Error(l.Name+": drain incomplete", logging.Err(err))
		return err
	}
	l.Log.Info(l.Name + ": drained")
	return nil
}

// HTTP returns the function's HTTP handler: the method check, the start,
// then serve with what was started.
func (l *Lazy[T]) HTTP(serve func(v T, w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		l.init()
		if len(l.Methods) > 0 && !slices.Contains(l.Methods, r.Method) {
			allow := strings.Join(l.Methods, ", ")
			w.Header().Set("Allow", allow)
			WriteJSON(w, http.StatusMethodNotAllowed, map[string]string{"status": "error", "error": "use " + strings.Join(l.Methods, " or ")})
			return
		}
		v, err := l.Get(r.Context())
		if err != nil {
			WriteJSON(w, StatusFor(err), l.StartFailed(err))
			return
		}
		serve(v, w, r)
	}
}
