package rollup

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/logging"
)

func init() {
	functions.HTTP("Rollup", Rollup)
}

// defaultHandler is the deployed function: configuration from the
// environment, the pool from shared/dbconn, alerts to ALERT_TOPIC.
var defaultHandler = newHandler(runnerFromEnv, logging.New(os.Stdout, slog.LevelInfo))

// Rollup is the HTTP function Cloud Scheduler invokes (every minute, GET or
// POST, body ignored). It answers 200 with the run's Summary, also when
// another run holds the lock (status "skipped"), and 500 with the summary
// and an error when a step failed or the function could not start.
func Rollup(w http.ResponseWriter, r *http.Request) {
	defaultHandler.ServeHTTP(w, r)
}

// handler builds its Runner on the first request rather than at start-up,
// so a cold start answers (with a JSON error) even when configuration or
// the database is broken; a failed initialisation is retried on the next
// request.
type handler struct {
	newRunner func(ctx context.Context) (*Runner, error)
	log       *slog.Logger

	mu     sync.Mutex
	runner *Runner
}

func newHandler(newRunner func(ctx context.Context) (*Runner, error), log *slog.Logger) *handler {
	return &handler{newRunner: newRunner, log: log}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"status": "error", "error": "use GET or POST"})
		return
	}
	runner, err := h.get(r.Context())
	if err != nil {
		h.log.Error("rollup: initialisation failed", "error", err.Error())
		writeJSON(w, http.StatusInternalServerError, map[string]string{"status": "error", "error": err.Error()})
		return
	}
	sum, err := runner.Run(r.Context())
	if err != nil {
		h.log.Error("rollup: run failed", "error", err.Error(), "summary", sum)
		writeJSON(w, http.StatusInternalServerError, sum)
		return
	}
	if sum.Status == "skipped" {
		h.log.Info("rollup: skipped, another run is working", "summary", sum)
	} else {
		h.log.Info("rollup: run done", "summary", sum)
	}
	writeJSON(w, http.StatusOK, sum)
}

func (h *handler) get(ctx context.Context) (*Runner, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.runner != nil {
		return h.runner, nil
	}
	// The pool and clients outlive this request.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	runner, err := h.newRunner(ctx)
	if err != nil {
		return nil, err
	}
	h.runner = runner
	return runner, nil
}

// runnerFromEnv reads Config and the dbconn variables (DATABASE_URL,
// DB_SECRET, CLOUDSQL_INSTANCE, ...) and opens the pool and, with
// ALERT_TOPIC, the Pub/Sub publisher.
func runnerFromEnv(ctx context.Context) (*Runner, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	dbcfg, err := dbconn.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	db, err := dbconn.Open(ctx, dbcfg)
	if err != nil {
		return nil, err
	}
	var pub Publisher
	if cfg.AlertTopic != "" {
		p, err := NewPubSubPublisher(ctx, cfg)
		if err != nil {
			db.Close()
			return nil, err
		}
		pub = p
	}
	return NewRunner(db, cfg, pub), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// A client that went away cannot be told anything more.
	_ = json.NewEncoder(w).Encode(v)
}
