package readers_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/readers"
	"apigee-timescale/shared/pushauth"
)

func post(t *testing.T, h http.Handler, method, target string, hdr map[string]string) (int, readers.Summary) {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	h.ServeHTTP(w, r)
	var sum readers.Summary
	if err := json.Unmarshal(w.Body.Bytes(), &sum); err != nil {
		t.Fatalf("answer %d is not a summary: %v: %s", w.Code, err, w.Body)
	}
	return w.Code, sum
}

// TestHTTP: the status codes the scheduler sees.
func TestHTTP(t *testing.T) {
	t.Parallel()
	db := testkit.New(t, testkit.TimescaleDB)
	f := newFixture(t, db)
	f.api.Put(org, reader("app", "acme", ""))
	f.api.Put(org, reader("bad", "nosuch", ""))
	const aud, sa = "https://readers.example.run.app", "scheduler@test-project.iam.gserviceaccount.com"
	signer := pushauthtest.NewSigner(t)
	v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	authed := f.service(t, v)
	down, err := readers.NewAPIClient(context.Background(), org, "http://127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	unreachable, err := readers.NewService(readers.Config{Org: org}, readers.Deps{DB: db.LoginPool(t, "apigee_reader_sync"), Apps: down})
	if err != nil {
		t.Fatal(err)
	}
	bearer := map[string]string{"Authorization": "Bearer " + signer.IDToken(t, aud, sa, time.Hour)}
	cases := []struct {
		name, method, target string
		svc                  http.Handler
		hdr                  map[string]string
		inject               int
		code                 int
		status               string
	}{
		{"GET", http.MethodGet, "/", f.svc, nil, 0, http.StatusMethodNotAllowed, readers.StatusFailed},
		{"bad dry_run", http.MethodPost, "/?dry_run=maybe", f.svc, nil, 0, http.StatusBadRequest, readers.StatusFailed},
		{"dry run", http.MethodPost, "/?dry_run=true", f.svc, nil, 0, http.StatusOK, readers.StatusPlanned},
		{"Apigee unavailable", http.MethodPost, "/", f.svc, nil, http.StatusServiceUnavailable, http.StatusServiceUnavailable, readers.StatusFailed},
		{"Apigee unreachable", http.MethodPost, "/", unreachable, nil, 0, http.StatusServiceUnavailable, readers.StatusFailed},
		{"Apigee forbids", http.MethodPost, "/", f.svc, nil, http.StatusForbidden, http.StatusInternalServerError, readers.StatusFailed},
		{"no token", http.MethodPost, "/", authed, nil, 0, http.StatusUnauthorized, readers.StatusFailed},
		{"wrong audience", http.MethodPost, "/", authed, map[string]string{"Authorization": "Bearer " + signer.IDToken(t, "https://elsewhere", sa, time.Hour)}, 0, http.StatusUnauthorized, readers.StatusFailed},
		{"synced, one app refused", http.MethodPost, "/", authed, bearer, 0, http.StatusOK, readers.StatusSynced},
		{"unchanged", http.MethodPost, "/", f.svc, nil, 0, http.StatusOK, readers.StatusUnchanged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.inject != 0 {
				f.api.FailNext(c.inject)
			}
			code, sum := post(t, c.svc, c.method, c.target, c.hdr)
			if code != c.code || sum.Status != c.status {
				t.Fatalf("answer %d %+v, want %d %s", code, sum, c.code, c.status)
			}
			if code != http.StatusOK && sum.Error == "" {
				t.Fatalf("error answer without an error: %+v", sum)
			}
			if c.status == readers.StatusSynced && (len(sum.Refused) != 1 || sum.Refused[0].AppID != "bad") {
				t.Fatalf("refusals %+v, want app bad", sum.Refused)
			}
		})
	}
	f.wantSynced(t, f.roleOf(t, "app"), []string{"acme"})
	if !contains(f.logs.String(), "readers: app refused") {
		t.Fatal("the refusal was not logged")
	}
}

// TestHTTPNotConfigured: the deployed entry point answers 500 with the
// configuration error when it cannot start.
func TestHTTPNotConfigured(t *testing.T) {
	t.Setenv(readers.EnvOrg, "")
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
	code, sum := post(t, http.HandlerFunc(readers.SyncReaders), http.MethodPost, "/", nil)
	if code != http.StatusInternalServerError || !contains(sum.Error, readers.EnvOrg) {
		t.Fatalf("answer %d %+v, want 500 naming %s", code, sum, readers.EnvOrg)
	}
	if code, _ := post(t, http.HandlerFunc(readers.SyncReaders), http.MethodGet, "/", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET answered %d", code)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
