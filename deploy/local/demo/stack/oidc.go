package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Where google.golang.org/api/idtoken fetches Google's signing keys.
const (
	googleCertsURL = "https://www.googleapis.com/oauth2/v3/certs"
	iapCertsURL    = "https://www.gstatic.com/iap/verify/public_key-jwk"
)

// Signer is a local stand-in for Google's ID token signing: the push
// relay mints tokens with it and ingest's verifier fetches its key set
// through HTTPClient, so push authentication runs unchanged without
// network. (pushauthtest does the same for tests; it needs a testing.TB.)
type Signer struct {
	key *rsa.PrivateKey
	kid string
}

// NewSigner makes a fresh 2048-bit key.
func NewSigner() (*Signer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("stack: signing key: %w", err)
	}
	return &Signer{key: key, kid: "local-" + RandomSuffix(8)}, nil
}

// TokenSource returns Google-shaped ID tokens for aud and email, valid for
// ttl, as a push subscription with an OIDC service account sends them
// (pushrelay.Config.TokenSource). Like Google's token sources it reuses a
// token until it is half way to expiry: signing one per request would cost
// a millisecond of CPU each. A negative ttl mints expired tokens, each
// call a new one.
func (s *Signer) TokenSource(aud, email string, ttl time.Duration) func(context.Context) (string, error) {
	var mu sync.Mutex
	var tok string
	var renew time.Time
	return func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if tok != "" && now.Before(renew) {
			return tok, nil
		}
		t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss":            "https://accounts.google.com",
			"aud":            aud,
			"azp":            "100000000000000000001",
			"sub":            "100000000000000000001",
			"email":          email,
			"email_verified": true,
			"iat":            now.Unix(),
			"exp":            now.Add(ttl).Unix(),
		})
		t.Header["kid"] = s.kid
		signed, err := t.SignedString(s.key)
		if err != nil {
			return "", fmt.Errorf("stack: sign token: %w", err)
		}
		tok, renew = signed, now.Add(ttl/2)
		return tok, nil
	}
}

// JWKS is the signer's public key in the format of Google's key endpoint.
func (s *Signer) JWKS() []byte {
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "alg": "RS256", "use": "sig", "kid": s.kid,
		"n": base64.RawURLEncoding.EncodeToString(s.key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(s.key.E)).Bytes()),
	}}})
	return b
}

// HTTPClient answers Google's key endpoints with this signer's key set
// (pushauth.Config.HTTPClient) and refuses anything else.
func (s *Signer) HTTPClient() *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		var body []byte
		switch r.URL.String() {
		case googleCertsURL:
			body = s.JWKS()
		case iapCertsURL:
			body = []byte(`{"keys":[]}`)
		default:
			return nil, fmt.Errorf("stack: local key client refuses %s", r.URL)
		}
		return &http.Response{
			StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:        http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"public, max-age=3600"}},
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
			Request:       r,
		}, nil
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
