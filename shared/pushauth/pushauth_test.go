package pushauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/shared/pushauth"
)

const (
	aud = "https://ingest.example.run.app/push"
	sa  = "pubsub-push@proj.iam.gserviceaccount.com"
)

func newVerifier(t *testing.T, cfg pushauth.Config) *pushauth.Verifier {
	t.Helper()
	v, err := pushauth.NewVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func request(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, aud, nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	return r
}

func TestVerify(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	sameKID := pushauthtest.NewSignerWithKeyID(t, signer.KeyID())
	otherKID := pushauthtest.NewSigner(t)

	strict := newVerifier(t, pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	anyEmail := newVerifier(t, pushauth.Config{Audience: aud, HTTPClient: signer.HTTPClient()})

	claims := func(edit func(map[string]any)) map[string]any {
		c := pushauthtest.IDTokenClaims(aud, sa, time.Hour)
		edit(c)
		return c
	}
	valid := signer.IDToken(t, aud, sa, time.Hour)

	tests := []struct {
		name     string
		verifier *pushauth.Verifier
		header   string // Authorization header; empty = none
		token    string // the token inside header, to check it never leaks
		wantErr  string // substring of the error; empty = success
	}{
		{name: "valid", verifier: strict, token: valid},
		{name: "valid, lowercase scheme", verifier: strict, header: "bearer " + valid, token: valid},
		{name: "issuer without scheme", verifier: strict,
			token: signer.Token(t, claims(func(c map[string]any) { c["iss"] = "accounts.google.com" }))},
		{name: "any email when no service account configured", verifier: anyEmail,
			token: signer.IDToken(t, aud, "someone@example.com", time.Hour)},
		{name: "missing header", verifier: strict, header: "", wantErr: "missing Authorization header"},
		{name: "not bearer", verifier: strict, header: "Basic " + valid, token: valid, wantErr: "not a bearer token"},
		{name: "empty bearer", verifier: strict, header: "Bearer ", wantErr: "empty bearer token"},
		{name: "malformed, two segments", verifier: strict, token: "abc.def", wantErr: "malformed token"},
		{name: "malformed, bad base64", verifier: strict, token: "a!.b.c", wantErr: "malformed token"},
		{name: "malformed, payload not JSON", verifier: strict,
			token: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", wantErr: "malformed token"},
		{name: "unsigned", verifier: strict,
			token: unsigned(t, claims(func(map[string]any) {})), wantErr: "unsupported signing algorithm"},
		{name: "bad signature, other key same kid", verifier: strict,
			token: sameKID.IDToken(t, aud, sa, time.Hour), wantErr: "bad signature"},
		{name: "bad signature, unknown kid", verifier: strict,
			token: otherKID.IDToken(t, aud, sa, time.Hour), wantErr: "bad signature"},
		{name: "bad signature, tampered payload", verifier: strict,
			token:   tamper(t, valid, signer.Token(t, claims(func(c map[string]any) { c["email"] = "evil@example.com" }))),
			wantErr: "bad signature"},
		{name: "expired", verifier: strict, token: signer.IDToken(t, aud, sa, -time.Minute), wantErr: "expired"},
		{name: "wrong audience", verifier: strict,
			token: signer.IDToken(t, "https://elsewhere.example", sa, time.Hour), wantErr: "wrong audience"},
		{name: "wrong issuer", verifier: strict,
			token:   signer.Token(t, claims(func(c map[string]any) { c["iss"] = "https://evil.example" })),
			wantErr: "wrong issuer"},
		{name: "wrong email", verifier: strict,
			token: signer.IDToken(t, aud, "other@proj.iam.gserviceaccount.com", time.Hour), wantErr: "wrong email"},
		{name: "email not verified", verifier: strict,
			token:   signer.Token(t, claims(func(c map[string]any) { c["email_verified"] = false })),
			wantErr: "email not verified"},
		{name: "email_verified missing", verifier: strict,
			token:   signer.Token(t, claims(func(c map[string]any) { delete(c, "email_verified") })),
			wantErr: "email not verified"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			header := tc.header
			if header == "" && tc.token != "" {
				header = "Bearer " + tc.token
			}
			got, err := tc.verifier.Verify(context.Background(), request(header))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.Audience != aud || got.Subject == "" || got.Email == "" || got.Expires.Before(time.Now()) {
					t.Errorf("claims = %+v", got)
				}
				if !strings.Contains(got.Issuer, "accounts.google.com") {
					t.Errorf("issuer = %q", got.Issuer)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify succeeded, want error containing %q", tc.wantErr)
			}
			if !errors.Is(err, pushauth.ErrUnauthenticated) {
				t.Errorf("error %v does not wrap ErrUnauthenticated", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %q, want it to contain %q", err, tc.wantErr)
			}
			assertNoLeak(t, err, tc.token)
		})
	}
}

func TestVerifyEmailClaim(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	v := newVerifier(t, pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	got, err := v.Verify(context.Background(), request("Bearer "+signer.IDToken(t, aud, sa, time.Hour)))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Email != sa || got.Issuer != pushauthtest.Issuer {
		t.Errorf("claims = %+v", got)
	}
}

func TestVerifyKeysUnavailable(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	failing := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return nil, errors.New("connection refused")
	})}
	v := newVerifier(t, pushauth.Config{Audience: aud, HTTPClient: failing})
	token := signer.IDToken(t, aud, sa, time.Hour)
	_, err := v.Verify(context.Background(), request("Bearer "+token))
	if !errors.Is(err, pushauth.ErrUnauthenticated) || !errors.Is(err, pushauth.ErrKeysUnavailable) {
		t.Fatalf("error = %v, want ErrUnauthenticated and ErrKeysUnavailable", err)
	}
	assertNoLeak(t, err, token)
}

// idtoken caches the key set for the response's max-age; a Verifier shared
// across requests must not fetch it per request.
func TestVerifyCachesKeys(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	var fetches atomic.Int32
	inner := signer.HTTPClient().Transport
	counting := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fetches.Add(1)
		return inner.RoundTrip(r)
	})}
	v := newVerifier(t, pushauth.Config{Audience: aud, HTTPClient: counting})
	for range 5 {
		if _, err := v.Verify(context.Background(), request("Bearer "+signer.IDToken(t, aud, sa, time.Hour))); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("key set fetched %d times, want 1", n)
	}
}

func TestNewVerifierNeedsAudience(t *testing.T) {
	if _, err := pushauth.NewVerifier(context.Background(), pushauth.Config{}); err == nil {
		t.Fatal("NewVerifier without audience succeeded")
	}
}

func assertNoLeak(t *testing.T, err error, token string) {
	t.Helper()
	if token == "" {
		return
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("error text contains the token: %q", err)
	}
	if i := strings.LastIndexByte(token, '.'); i >= 0 && len(token)-i > 16 && strings.Contains(err.Error(), token[i+1:]) {
		t.Errorf("error text contains the token signature: %q", err)
	}
}

// tamper returns the header and payload of forged with the signature of
// genuine.
func tamper(t *testing.T, genuine, forged string) string {
	t.Helper()
	g := strings.Split(genuine, ".")
	f := strings.Split(forged, ".")
	if len(g) != 3 || len(f) != 3 {
		t.Fatal("tamper: not a JWT")
	}
	return f[0] + "." + f[1] + "." + g[2]
}

func unsigned(t *testing.T, claims map[string]any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(claims)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatalf("sign none: %v", err)
	}
	return s
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
