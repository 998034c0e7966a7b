package rotate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/pushauth"
)

// TestDeployedFunction drives the registered Rotate function, configured
// from the environment only. Broken configuration is answered as a JSON
// failure at "init" and retried on the next request. Once configured, the
// run goes through NewFromEnv's pool, Secret Manager client and the
// production logins, which this test database's set_login_password
// refuses (it only accepts the fixture's pair, so that no test touches the
// cluster-wide apigee_ingest_a/_b): the run must fail at "set", naming
// apigee_ingest_a, and leave the secret alone.
func TestDeployedFunction(t *testing.T) {
	f := newFixture(t, testkit.TimescaleDB)
	call := func() (int, rotate.Summary) {
		w := httptest.NewRecorder()
		rotate.Rotate(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("")))
		var sum rotate.Summary
		if err := json.Unmarshal(w.Body.Bytes(), &sum); err != nil {
			t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body.String())
		}
		return w.Code, sum
	}

	clearEnv(t)
	if code, sum := call(); code != http.StatusInternalServerError || sum.FailedStep != "init" {
		t.Fatalf("unconfigured: %d %+v, want 500 at init", code, sum)
	}

	_, rotDSN := f.db.Login(t, "apigee_rotate")
	for k, v := range map[string]string{
		rotate.EnvSecret: f.secret, rotate.EnvMinInterval: "0s",
		rotate.EnvDBHost: f.host, rotate.EnvDBPort: f.port, rotate.EnvDBName: f.db.Name, rotate.EnvDBSSLMode: "disable",
		dbconn.EnvDatabaseURL: rotDSN, dbconn.EnvSecretManagerEndpoint: f.smAddr,
	} {
		t.Setenv(k, v)
	}
	code, sum := call()
	if code != http.StatusInternalServerError || sum.FailedStep != rotate.StepSet || !strings.Contains(sum.Error, rotate.LoginA+" is not a rotatable login") {
		t.Fatalf("configured: %d %+v, want 500 at set refusing %s", code, sum, rotate.LoginA)
	}
	if n := len(f.versions(t)); n != 0 {
		t.Fatalf("a failed run added %d versions", n)
	}
}

// refusingVerifier refuses every token with err.
type refusingVerifier struct{ err error }

func (v refusingVerifier) Verify(context.Context, *http.Request) (pushauth.Claims, error) {
	return pushauth.Claims{}, v.err
}

// A refused token is answered through function.StatusFor: 401 when the
// token is bad, 503 when Google's signing keys could not be fetched (the
// token may be fine; the caller should retry). Nothing is rotated.
func TestRefusedCallerStatus(t *testing.T) {
	f := newFixture(t, testkit.TimescaleDB)
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"bad token", fmt.Errorf("%w: token expired", pushauth.ErrUnauthenticated), http.StatusUnauthorized},
		{"keys unavailable", fmt.Errorf("%w: %w: cannot verify signature", pushauth.ErrUnauthenticated, pushauth.ErrKeysUnavailable), http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := f.newService(t, func(c *rotate.Config) { c.Audience = "https://rotate" }, func(d *rotate.Deps) { d.Verifier = refusingVerifier{tt.err} })
			code, sum := f.post(t, svc, "", scheduler)
			if code != tt.want || sum.Error != "unauthenticated" {
				t.Fatalf("answered %d %+v, want %d unauthenticated", code, sum, tt.want)
			}
			if n := len(f.versions(t)); n != 0 {
				t.Fatalf("a refused call added %d versions", n)
			}
		})
	}
}
