package rotate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

// EventSecretRotate is the eventType attribute of the Pub/Sub message
// Secret Manager publishes when a secret's rotation schedule fires. Other
// event types (SECRET_VERSION_ADD, which every rotation itself causes, and
// so on) are acknowledged and ignored.
const EventSecretRotate = "SECRET_ROTATE"

// maxBody bounds what is read of a request: a scheduler body or a push
// envelope around a Secret resource is far smaller.
const maxBody = 1 << 20

// pushEnvelope is the part of a Pub/Sub push body that matters here.
type pushEnvelope struct {
	Message *struct {
		Attributes map[string]string `json:"attributes"`
		MessageID  string            `json:"messageId"`
	} `json:"message"`
	Subscription string `json:"subscription"`
}

// ServeHTTP runs a rotation for a POST from Cloud Scheduler (any body that
// is not a Pub/Sub push envelope) or for a push envelope whose eventType
// attribute is SECRET_ROTATE and, when it has a secretId attribute, names
// this secret. It answers a JSON Summary: 200 when rotated, skipped or
// ignored; 500 with failed_step when a step failed; 401 when the caller's
// token is refused; 405 for other methods.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		function.WriteJSON(w, http.StatusMethodNotAllowed, Summary{Status: StatusFailed, Secret: s.cfg.Secret, Error: "use POST", DisabledVersions: []string{}})
		return
	}
	if s.verifier == nil {
		s.log.Warn("rotate: caller authentication is OFF: ROTATE_AUDIENCE is not set")
	} else if _, err := s.verifier.Verify(r.Context(), r); err != nil {
		// The reason goes to the log, not to an unauthenticated caller.
		s.log.Warn("rotate: caller authentication failed", logging.Err(err), "remote", r.RemoteAddr)
		function.WriteJSON(w, function.StatusFor(err), Summary{Status: StatusFailed, Secret: s.cfg.Secret, Error: "unauthenticated", DisabledVersions: []string{}})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		function.WriteJSON(w, function.StatusFor(fmt.Errorf("rotate: read body: %w: %w", function.ErrBadRequest, err)), Summary{Status: StatusFailed, Secret: s.cfg.Secret, Error: "could not read the request body", DisabledVersions: []string{}})
		return
	}
	trigger, ignore := s.classify(r, body)
	if ignore != "" {
		sum := Summary{Status: StatusIgnored, Secret: s.cfg.Secret, Trigger: trigger, Reason: ignore, DisabledVersions: []string{}}
		s.log.Info("rotate: notification ignored", "summary", sum)
		function.WriteJSON(w, http.StatusOK, sum)
		return
	}

	// The run is not tied to the caller: a scheduler that gives up waiting
	// should not cut a rotation short (that is safe, but wasteful).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.Timeout)
	defer cancel()
	sum, err := s.Rotate(ctx, trigger)
	switch {
	case err != nil:
		s.log.Error("rotate: run failed", "summary", sum)
	case sum.Status == StatusSkipped:
		s.log.Info("rotate: skipped", "summary", sum)
	default:
		s.log.Info("rotate: rotated", "summary", sum)
	}
	function.WriteJSON(w, function.StatusFor(err), sum)
}

// classify names the trigger of a request, and says why to ignore it when
// it is a notification that must not rotate.
func (s *Service) classify(r *http.Request, body []byte) (trigger, ignore string) {
	var env pushEnvelope
	if json.Unmarshal(body, &env) != nil || env.Message == nil {
		if r.Header.Get("X-CloudScheduler") == "true" {
			return "scheduler", ""
		}
		return "http", ""
	}
	attrs := env.Message.Attributes
	et := attrs["eventType"]
	trigger = "pubsub:" + et
	if env.Message.MessageID != "" {
		trigger += ":" + env.Message.MessageID
	}
	if et != EventSecretRotate {
		return trigger, fmt.Sprintf("eventType %q is not %s", et, EventSecretRotate)
	}
	// Notifications name the project by number, the configuration usually
	// by ID: compare secret IDs only.
	if id := attrs["secretId"]; id != "" && secretID(id) != secretID(s.cfg.Secret) {
		return trigger, fmt.Sprintf("notification is for secret %q, not %q", id, s.cfg.Secret)
	}
	return trigger, ""
}

func secretID(name string) string {
	name = strings.TrimSuffix(name, "/")
	return name[strings.LastIndex(name, "/")+1:]
}

// LogValue keeps a Summary readable in structured logs.
func (s Summary) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("status", s.Status),
		slog.String("secret", s.Secret),
		slog.String("trigger", s.Trigger),
		slog.Int64("duration_ms", s.DurationMS),
	}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	add("reason", s.Reason)
	add("rotated_login", s.RotatedLogin)
	if s.ValidUntil != nil {
		attrs = append(attrs, slog.Time("valid_until", *s.ValidUntil))
	}
	add("previous_version", s.PreviousVersion)
	add("new_version", s.NewVersion)
	if len(s.DisabledVersions) > 0 {
		attrs = append(attrs, slog.Any("disabled_versions", s.DisabledVersions))
	}
	add("failed_step", s.FailedStep)
	add("error", s.Error)
	return slog.GroupValue(attrs...)
}
