package readers

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/pushauth"
)

// readers is the deployed function: everything from the environment.
var readers = &function.Lazy[*Service]{
	Name:    "readers",
	Start:   NewFromEnv,
	Methods: []string{http.MethodPost},
	// Configuration errors name variables and values that are not secret.
	StartFailed: func(err error) any {
		return Summary{Status: StatusFailed, Changes: []Change{}, Refused: []Refusal{}, Error: err.Error()}
	},
}

var serve = readers.HTTP((*Service).ServeHTTP)

func init() {
	functions.HTTP("SyncReaders", SyncReaders)
}

// SyncReaders is the HTTP function Cloud Scheduler invokes; see
// Service.ServeHTTP.
func SyncReaders(w http.ResponseWriter, r *http.Request) { serve(w, r) }

// NewFromEnv builds a Service from the environment: Config (READERS_*),
// the sync's own pool (shared/dbconn variables), the Apigee API client and,
// with READERS_AUDIENCE, the OIDC verifier. Close releases them.
func NewFromEnv(ctx context.Context, logger *slog.Logger) (*Service, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	if cfg.DB.ApplicationName == "" {
		cfg.DB.ApplicationName = defaultApplication
	}
	db, err := dbconn.Open(ctx, cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("readers: %w", err)
	}
	d := Deps{DB: db, Logger: logger}
	fail := func(err error) (*Service, error) {
		db.Close()
		return nil, fmt.Errorf("readers: %w", err)
	}
	if d.Apps, err = NewAPIClient(ctx, cfg.Org, cfg.Endpoint); err != nil {
		return fail(err)
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
	s.closers = []func(){db.Close}
	return s, nil
}
