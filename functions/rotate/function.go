package rotate

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"cloud.google.com/go/cloudsqlconn"
	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/secrets"
)

// rotate is the deployed function: everything from the environment.
var rotate = &function.Lazy[*Service]{
	Name:  "rotate",
	Start: NewFromEnv,
	// Configuration errors name variables, never values that could be
	// secret, but the details still go to the log only.
	StartFailed: func(error) any {
		return Summary{Status: StatusFailed, FailedStep: "init", DisabledVersions: []string{},
			Error: "rotate is not configured or cannot reach its dependencies; see the logs"}
	},
}

var serve = rotate.HTTP((*Service).ServeHTTP)

func init() {
	functions.HTTP("Rotate", Rotate)
}

// Rotate is the HTTP function that Cloud Scheduler, or a Pub/Sub push
// subscription on the secret's topic, invokes; see Service.ServeHTTP.
func Rotate(w http.ResponseWriter, r *http.Request) { serve(w, r) }

// NewFromEnv builds a Service from the environment: Config (ROTATE_*), the
// rotator's own pool (shared/dbconn variables), a Secret Manager client
// (SECRET_MANAGER_ENDPOINT for a local one), a Cloud SQL dialer when
// CLOUDSQL_INSTANCE is set, and the OIDC verifier when ROTATE_AUDIENCE is.
// Close releases them.
func NewFromEnv(ctx context.Context, logger *slog.Logger) (*Service, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	if cfg.DB.ApplicationName == "" {
		cfg.DB.ApplicationName = "apigee-rotate"
	}
	var closers []func()
	fail := func(err error) (*Service, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		return nil, fmt.Errorf("rotate: %w", err)
	}
	db, err := dbconn.Open(ctx, cfg.DB)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, db.Close)
	sm, err := secrets.NewClient(ctx, cfg.DB.SecretManagerEndpoint)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { _ = sm.Close() })
	d := Deps{DB: db, Secrets: sm, Logger: logger}
	if cfg.CloudSQLInstance != "" {
		// Password logins: no IAM authentication on this dialer, even when
		// the rotator itself logs in with IAM.
		dialer, err := cloudsqlconn.NewDialer(ctx, dbconn.DialerOptions()...)
		if err != nil {
			return fail(fmt.Errorf("cloud sql dialer: %w", err))
		}
		closers = append(closers, func() { _ = dialer.Close() })
		d.Dialer = dialer
	}
	if cfg.Audience != "" {
		v, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: cfg.Audience, ServiceAccount: cfg.ServiceAccount})
		if err != nil {
			return fail(err)
		}
		d.Verifier = v
	}
	s, err := NewService(cfg, d)
	if err != nil {
		return fail(err)
	}
	s.closers = closers
	return s, nil
}
