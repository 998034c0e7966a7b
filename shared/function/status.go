package function

import (
	"encoding/json"
	"errors"
	"net/http"

	"apigee-timescale/shared/pushauth"
)

// Classes of errors, for the stages that know what a failure means to the
// caller but should not speak HTTP: wrap one (fmt.Errorf("...: %w: %w",
// function.ErrUnavailable, err)) and StatusFor answers accordingly.
var (
	// ErrBadRequest: the request itself is wrong; repeating it will not help.
	ErrBadRequest = errors.New("bad request")
	// ErrOverloaded: accepted work is at its bound; retry later (429).
	ErrOverloaded = errors.New("overloaded")
	// ErrUnavailable: a dependency is down or slow; retry later (503).
	ErrUnavailable = errors.New("unavailable")
)

// StatusFor is the one mapping from an error to the HTTP status the three
// functions answer it with; what is not classified is a 500.
//
// pushauth.ErrKeysUnavailable is checked before ErrUnauthenticated (it is
// wrapped together with it) and answered 503, not 401: the caller's token
// may be fine, this instance could not fetch Google's signing keys to check
// it. A 401 would blame the caller's credentials for our outage, and would
// count as an authentication failure in logs and alerts; a 503 says "retry
// later", which Pub/Sub and Cloud Scheduler both do.
func StatusFor(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, pushauth.ErrKeysUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, pushauth.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrOverloaded):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// WriteJSON answers v as JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// A client that went away cannot be told anything more.
	_ = json.NewEncoder(w).Encode(v)
}
