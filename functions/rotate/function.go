package rotate

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"cloud.google.com/go/cloudsqlconn"
	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/secrets"
)

func init() {
	functions.HTTP("Rotate", Rotate)
}

// defaultHandler is the deployed function: everything from the environment.
var defaultHandler = &lazyHandler{build: NewFromEnv, log: logging.New(os.Stdout, slog.LevelInfo)}

// Rotate is the HTTP function that Cloud Scheduler, or a Pub/Sub push
// subscription on the secret's topic, invokes; see Service.ServeHTTP.
func Rotate(w http.ResponseWriter, r *http.Request) {
	defaultHandler.ServeHTTP(w, r)
}

// lazyHandler builds its Service on the first request rather than at
// start-up, so that a cold start answers (with a JSON error) even when the
// configuration or a dependency is broken; a failed build is retried on the
// next request.
type lazyHandler struct {
	build func(ctx context.Context, log *slog.Logger) (*Service, error)
	log   *slog.Logger

	mu  sync.Mutex
	svc *Service
}

func (h *lazyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s, err := h.get(r.Context())
	if err != nil {
		// Configuration errors name variables, never values that could be
		// secret, but the details still go to the log only.
		h.log.Error("rotate: initialisation failed", "err", err.Error())
		writeJSON(w, http.StatusInternalServerError, Summary{Status: StatusFailed, FailedStep: "init",
			Error: "rotate is not configured or cannot reach its dependencies; see the logs", DisabledVersions: []string{}})
		return
	}
	s.ServeHTTP(w, r)
}

func (h *lazyHandler) get(ctx context.Context) (*Service, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.svc != nil {
		return h.svc, nil
	}
	// The clients outlive this request.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	s, err := h.build(ctx, h.log)
	if err != nil {
		return nil, err
	}
	h.svc = s
	return s, nil
}

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
		dialer, err := cloudsqlconn.NewDialer(ctx, cloudsqlconn.WithLazyRefresh())
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
