package rollup

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

// rollup is the deployed function: configuration from the environment,
// the pool from shared/dbconn, alerts to ALERT_TOPIC.
var rollup = newHandler(runnerFromEnv, logging.Stdout())

func init() {
	functions.HTTP("Rollup", Rollup)
}

// Rollup is the HTTP function Cloud Scheduler invokes (every minute, GET or
// POST, body ignored). It answers 200 with the run's Summary, also when
// another run holds the lock (status "skipped"), and 500 with the summary
// and an error when a step failed or the function could not start.
func Rollup(w http.ResponseWriter, r *http.Request) { rollup.ServeHTTP(w, r) }

// newHandler starts its Runner with start on the first request.
func newHandler(start func(ctx context.Context) (*Runner, error), log *slog.Logger) http.Handler {
	l := &function.Lazy[*Runner]{
		Name:    "rollup",
		Log:     log,
		Methods: []string{http.MethodGet, http.MethodPost},
		Start:   func(ctx context.Context, _ *slog.Logger) (*Runner, error) { return start(ctx) },
		// Rollup's configuration errors name variables and values that
		// are not secret: the scheduler's log shows what to fix.
		StartFailed: func(err error) any { return map[string]string{"status": "error", "error": err.Error()} },
	}
	return l.HTTP(func(runner *Runner, w http.ResponseWriter, r *http.Request) {
		sum, err := runner.Run(r.Context())
		switch {
		case err != nil:
			log.Error("rollup: run failed", logging.Err(err), "summary", sum)
		case sum.Status == "skipped":
			log.Info("rollup: skipped, another run is working", "summary", sum)
		default:
			log.Info("rollup: run done", "summary", sum)
		}
		function.WriteJSON(w, function.StatusFor(err), sum)
	})
}

// minConns is how many connections a run holds at once.
const minConns = 2

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
	if dbcfg.MaxConns < minConns {
		// With one, the refresh's second Acquire would wait for ever.
		return nil, fmt.Errorf("rollup: %s=%d: a run holds %d connections (the locked session and the refresh's reader)",
			dbconn.EnvMaxConns, dbcfg.MaxConns, minConns)
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
