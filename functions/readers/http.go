package readers

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"

	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/pushauth"
)

// Verifier checks a request's OIDC token; *pushauth.Verifier is one.
type Verifier interface {
	Verify(ctx context.Context, r *http.Request) (pushauth.Claims, error)
}

// ServeHTTP runs a sync for a POST (Cloud Scheduler's; the body is
// ignored). ?dry_run=true plans only. It answers the JSON Summary: 200
// when synced, unchanged, planned or skipped (refused apps are listed, and
// logged as warnings); 401 when the caller's token is refused; 400 for a
// bad dry_run; 503 when the Apigee API is unavailable; 500 when the run
// failed (nothing was changed); 405 for other methods.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		function.WriteJSON(w, code, Summary{Status: StatusFailed, Changes: []Change{}, Refused: []Refusal{}, Error: msg})
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(http.StatusMethodNotAllowed, "use POST")
		return
	}
	if s.verifier == nil {
		s.log.Warn("readers: caller authentication is OFF: " + EnvAudience + " is not set")
	} else if _, err := s.verifier.Verify(r.Context(), r); err != nil {
		s.log.Warn("readers: caller authentication failed", logging.Err(err), "remote", r.RemoteAddr)
		fail(function.StatusFor(err), "unauthenticated")
		return
	}
	dry := false
	if v := r.URL.Query().Get("dry_run"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			fail(http.StatusBadRequest, "dry_run must be true or false")
			return
		}
		dry = b
	}
	// Not tied to the caller: a scheduler that stops waiting should not
	// roll back a run that is nearly done.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.Timeout)
	defer cancel()
	sum, err := s.Sync(ctx, dry)
	s.logRun(sum, err)
	function.WriteJSON(w, function.StatusFor(err), sum)
}

func (s *Service) logRun(sum Summary, err error) {
	for _, r := range sum.Refused {
		s.log.Warn("readers: app refused", "app_id", r.AppID, "app", r.App, "reason", r.Reason)
	}
	if err != nil {
		s.log.Error("readers: run failed; nothing was changed", "summary", sum)
		return
	}
	s.log.Info("readers: "+sum.Status, "summary", sum)
}

// LogValue keeps a Summary readable in structured logs.
func (s Summary) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("status", s.Status),
		slog.Bool("dry_run", s.DryRun),
		slog.Int("apps", s.Apps),
		slog.Int("readers", s.Readers),
		slog.Any("changes", s.Changes),
		slog.Int("refused", len(s.Refused)),
		slog.Int64("duration_ms", s.DurationMS),
	}
	if s.Error != "" {
		attrs = append(attrs, slog.String("error", s.Error))
	}
	return slog.GroupValue(attrs...)
}
