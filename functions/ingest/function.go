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

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/cloudevents/sdk-go/v2/event"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/privacy"
	"apigee-timescale/shared/pushauth"
)

// service is the process-wide Service, started by the first delivery and
// drained on SIGTERM: what was acknowledged is committed, what was not is
// redelivered by Pub/Sub.
var service = &function.Lazy[*Service]{Name: "ingest", Start: NewFromEnv, Drain: drain}

func init() {
	functions.HTTP("Ingest", service.HTTP((*Service).ServeHTTP))
	functions.CloudEvent("IngestEvent", func(ctx context.Context, e event.Event) error {
		s, err := service.Get(ctx)
		if err != nil {
			return err
		}
		return s.HandleEvent(ctx, e)
	})
}

// NewFromEnv builds a Service from the environment: Config (whose garbage
// collector settings it applies), the database pool (shared/dbconn), the
// pseudonym key (INGEST_PRIVACY_KEY_SECRET) and, with PUSH_AUDIENCE, the
// OIDC verifier.
func NewFromEnv(ctx context.Context, logger *slog.Logger) (*Service, error) {
	return NewFromEnvWithKeys(ctx, logger, nil)
}

// NewFromEnvWithKeys is NewFromEnv whose OIDC verifier fetches Google's
// signing keys through keys (nil: idtoken's own client, which reaches
// Google). bench-ingest passes its stand-in signer's, so that the function
// it measures checks push tokens as deployed.
func NewFromEnvWithKeys(ctx context.Context, logger *slog.Logger, keys *http.Client) (*Service, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	cfg.TuneGC()
	pz, err := privacy.Load(ctx, cfg.Privacy)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
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
	d := Deps{DB: db, Logger: logger, Privacy: pz}
	if cfg.PushAudience != "" {
		v, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: cfg.PushAudience, ServiceAccount: cfg.PushServiceAccount, HTTPClient: keys})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("ingest: %w", err)
		}
		d.Verifier = v
	}
	return NewService(cfg, d)
}

// drain commits what is queued and answers what is in flight, within
// INGEST_DRAIN_TIMEOUT.
func drain(s *Service) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		return fmt.Errorf("ingest: unacknowledged deliveries will be redelivered: %w", err)
	}
	return nil
}
