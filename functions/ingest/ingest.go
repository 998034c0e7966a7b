// Package ingest is the push-triggered function that stores every Apigee
// API call record: it verifies the push OIDC token, validates and
// normalises records, group-commits concurrent deliveries with COPY into
// apigee.api_calls exactly once per message, and quarantines bad input in
// apigee.ingest_rejects with its reason.
//
// Two entry points share one core (Service): Ingest, an HTTP function for a
// Pub/Sub push subscription, and IngestEvent, a CloudEvent function for an
// Eventarc Pub/Sub trigger.
package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/cloudevents/sdk-go/v2/event"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/pushauth"
)

func init() {
	functions.HTTP("Ingest", handleHTTP)
	functions.CloudEvent("IngestEvent", handleEvent)
}

var (
	mu  sync.Mutex
	svc *Service
	log = logging.New(os.Stdout, slog.LevelInfo)
)

// service builds the process-wide Service on first use. A failure is
// answered as an error and retried on the next request, so a database that
// is briefly unreachable at cold start does not brick the instance.
func service(ctx context.Context) (*Service, error) {
	mu.Lock()
	defer mu.Unlock()
	if svc != nil {
		return svc, nil
	}
	s, err := NewFromEnv(ctx, log)
	if err != nil {
		return nil, err
	}
	svc = s
	go drainOnSIGTERM(s)
	return svc, nil
}

// NewFromEnv builds a Service from the environment: Config, the database
// pool (shared/dbconn) and, with PUSH_AUDIENCE, the OIDC verifier.
func NewFromEnv(ctx context.Context, logger *slog.Logger) (*Service, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	dbcfg, err := dbconn.ConfigFromEnv()
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if dbcfg.ApplicationName == "" {
		dbcfg.ApplicationName = "apigee-ingest"
	}
	db, err := dbconn.Open(ctx, dbcfg)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	d := Deps{DB: db, Logger: logger}
	if cfg.PushAudience != "" {
		v, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: cfg.PushAudience, ServiceAccount: cfg.PushServiceAccount})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("ingest: %w", err)
		}
		d.Verifier = v
	}
	return NewService(cfg, d)
}

// drainOnSIGTERM commits what is queued when Cloud Run (or a local run)
// stops the instance, then exits: nothing acknowledged is lost, and what
// was not acknowledged is redelivered by Pub/Sub.
func drainOnSIGTERM(s *Service) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
	sig := <-ch
	log.Info("draining before exit", "signal", sig.String())
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		log.Error("drain incomplete; unacknowledged deliveries will be redelivered", "err", err.Error())
		os.Exit(1)
	}
	log.Info("drained")
	os.Exit(0)
}

func handleHTTP(w http.ResponseWriter, r *http.Request) {
	s, err := service(r.Context())
	if err != nil {
		log.Error("ingest is not configured", "err", err.Error())
		http.Error(w, "ingest is not configured; see the logs", http.StatusServiceUnavailable)
		return
	}
	s.ServeHTTP(w, r)
}

func handleEvent(ctx context.Context, e event.Event) error {
	s, err := service(ctx)
	if err != nil {
		log.Error("ingest is not configured", "err", err.Error())
		return err
	}
	return s.HandleEvent(ctx, e)
}
