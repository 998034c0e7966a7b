// Package pushauthtest signs Google-style ID tokens with a throwaway key and
// serves that key where idtoken looks for Google's, so pushauth can be tested
// without network.
package pushauthtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Where idtoken fetches key sets: RS256 (service account ID tokens) and
// ES256 (IAP). Only the first ever holds this signer's key.
const (
	GoogleCertsURL = "https://www.googleapis.com/oauth2/v3/certs"
	IAPCertsURL    = "https://www.gstatic.com/iap/verify/public_key-jwk"
)

// Issuer is the "iss" IDToken puts in its tokens.
const Issuer = "https://accounts.google.com"

// Signer holds an RSA key and its key id.
type Signer struct {
	key *rsa.PrivateKey
	kid string
}

// NewSigner returns a Signer with a fresh 2048-bit key and a random key id.
func NewSigner(tb testing.TB) *Signer {
	tb.Helper()
	s, err := New()
	if err != nil {
		tb.Fatalf("pushauthtest: %v", err)
	}
	return s
}

// New is NewSigner for code that runs outside a test, such as the local
// demo stack, where the relay mints tokens and ingest verifies them.
func New() (*Signer, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("key id: %w", err)
	}
	return newSigner(hex.EncodeToString(b))
}

// NewSignerWithKeyID returns a Signer with a fresh key under the given key
// id, e.g. to forge a token that names a trusted key id.
func NewSignerWithKeyID(tb testing.TB, kid string) *Signer {
	tb.Helper()
	s, err := newSigner(kid)
	if err != nil {
		tb.Fatalf("pushauthtest: %v", err)
	}
	return s
}

func newSigner(kid string) (*Signer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return &Signer{key: key, kid: kid}, nil
}

// KeyID returns the "kid" the signer puts in token headers.
func (s *Signer) KeyID() string { return s.kid }

// Token signs claims as given (RS256, with the signer's kid).
func (s *Signer) Token(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	tok, err := s.sign(claims)
	if err != nil {
		tb.Fatalf("pushauthtest: %v", err)
	}
	return tok
}

// IDToken returns a token shaped like the ones Pub/Sub push sends: Google
// issuer, the given audience and email, email_verified true, expiring ttl
// from now (a negative ttl gives an expired token).
func (s *Signer) IDToken(tb testing.TB, aud, email string, ttl time.Duration) string {
	tb.Helper()
	return s.Token(tb, IDTokenClaims(aud, email, ttl))
}

// TokenSource returns IDTokens in the shape pushrelay.Config.TokenSource
// takes. Like Google's token sources it reuses a token until it is half way
// to expiry (signing costs about a millisecond of CPU); a negative ttl mints
// an expired token on every call. It reports errors instead of failing a
// test because it runs outside the test goroutine.
func (s *Signer) TokenSource(aud, email string, ttl time.Duration) func(context.Context) (string, error) {
	var mu sync.Mutex
	var tok string
	var renew time.Time
	return func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if ttl > 0 && tok != "" && time.Now().Before(renew) {
			return tok, nil
		}
		t, err := s.sign(IDTokenClaims(aud, email, ttl))
		if err != nil {
			return "", err
		}
		tok, renew = t, time.Now().Add(ttl/2)
		return tok, nil
	}
}

// IDTokenClaims returns the claims IDToken signs, for tests that alter one.
func IDTokenClaims(aud, email string, ttl time.Duration) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":            Issuer,
		"aud":            aud,
		"azp":            "100000000000000000001",
		"sub":            "100000000000000000001",
		"email":          email,
		"email_verified": true,
		"iat":            now.Unix(),
		"exp":            now.Add(ttl).Unix(),
	}
}

func (s *Signer) sign(claims map[string]any) (string, error) {
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
	t.Header["kid"] = s.kid
	tok, err := t.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

// JWKS returns the signer's public key as a JSON Web Key Set, the format of
// GoogleCertsURL.
func (s *Signer) JWKS() []byte {
	pub := s.key.PublicKey
	set := map[string]any{"keys": []map[string]string{{
		"kty": "RSA",
		"alg": "RS256",
		"use": "sig",
		"kid": s.kid,
		"n":   base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err) // a map of strings always marshals
	}
	return b
}

// HTTPClient returns a client whose transport answers GoogleCertsURL with
// JWKS and IAPCertsURL with an empty key set, and fails any other request,
// so nothing reaches the network.
func (s *Signer) HTTPClient() *http.Client { return KeySetClient(s.JWKS()) }

// KeySetClient is HTTPClient for a key set given as JWKS bytes, for a
// process that verifies tokens another one signs (bench-ingest's function
// and its load generator).
func KeySetClient(jwks []byte) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		var body []byte
		switch r.URL.String() {
		case GoogleCertsURL:
			body = jwks
		case IAPCertsURL:
			body = []byte(`{"keys":[]}`)
		default:
			return nil, fmt.Errorf("pushauthtest: unexpected request to %s", r.URL)
		}
		return &http.Response{
			StatusCode: http.StatusOK,
			Status:     "200 OK",
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Header: http.Header{
				"Content-Type":  {"application/json"},
				"Cache-Control": {"public, max-age=3600"},
			},
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
			Request:       r,
		}, nil
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
