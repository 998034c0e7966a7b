// Package pushauth verifies the Google-signed OIDC ID tokens that Pub/Sub push
// subscriptions and Cloud Scheduler HTTP jobs attach as
// "Authorization: Bearer <token>".
//
// Signature, audience and expiry are checked by google.golang.org/api/idtoken,
// which fetches Google's RS256 keys from https://www.googleapis.com/oauth2/v3/certs
// and caches them for the max-age of that response. idtoken checks neither the
// issuer nor the email claims, so this package does.
package pushauth

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/api/idtoken"
)

// ErrUnauthenticated is wrapped by every error Verify returns; the rest of
// the error text says why. Handlers answer 401 for it.
var ErrUnauthenticated = errors.New("pushauth: unauthenticated")

// ErrKeysUnavailable is wrapped, together with ErrUnauthenticated, when
// Google's signing keys could not be fetched: the token may be fine, so a
// handler may prefer 503 to 401 (both make Pub/Sub retry).
var ErrKeysUnavailable = errors.New("pushauth: signing keys unavailable")

// Google signs ID tokens with either spelling of the issuer.
var googleIssuers = map[string]bool{
	"https://accounts.google.com": true,
	"accounts.google.com":         true,
}

// Config configures a Verifier.
type Config struct {
	// Audience is the expected "aud" claim. Required: an empty audience would
	// make idtoken skip the check. Pub/Sub defaults it to the push endpoint
	// URL, Cloud Scheduler to the target URI, unless one is configured.
	Audience string

	// ServiceAccount, when set, is the only accepted "email" claim, and that
	// email must be verified. Empty accepts any Google-signed token for
	// Audience: set it in production.
	ServiceAccount string

	// HTTPClient fetches Google's signing keys. Default: a plain client made
	// by idtoken. Tests inject pushauthtest.Signer.HTTPClient.
	HTTPClient *http.Client
}

// Claims are the verified claims of a token.
type Claims struct {
	Email    string
	Subject  string
	Issuer   string
	Audience string
	Expires  time.Time
}

// Verifier checks push tokens. It is safe for concurrent use and caches
// signing keys and verified tokens, so create one per process, not per
// request.
type Verifier struct {
	cfg       Config
	validator *idtoken.Validator
	verified  verifiedTokens
	now       func() time.Time // time.Now; tests move it
}

// verifiedTokens remembers the claims of tokens that passed every check.
// Pub/Sub puts one token on every push of a time window ("they would all
// share the same token for a limited time window", in the comments of
// Google's Pub/Sub push samples, e.g. GoogleCloudPlatform/
// python-docs-samples appengine/flexible/pubsub/main.py, which recommend
// caching already seen tokens at high volume), and checking one costs
// about 50 µs and 131 allocations (BenchmarkVerify/first), as much as all
// the rest of a single-record delivery. A token is remembered until it
// expires, and at most verifiedFor after its check, so that a signing key
// Google withdraws stops being honoured through the cache within minutes
// (idtoken itself trusts a fetched key set for its max-age, hours). Only
// tokens that passed are kept: a bad one is checked in full every time,
// and its error says why.
type verifiedTokens struct {
	mu     sync.RWMutex
	tokens map[string]verifiedToken
}

type verifiedToken struct {
	claims Claims
	until  time.Time
}

const (
	verifiedFor = 5 * time.Minute
	// maxVerified bounds the memory: Pub/Sub's push servers each send their
	// own token, a few at a time. The map's keys are the tokens themselves:
	// each is a credential for this audience alone, for an hour at most,
	// and the process holds stronger ones (its database login).
	maxVerified = 64
)

func (c *verifiedTokens) get(token string, now time.Time) (Claims, bool) {
	c.mu.RLock()
	t, ok := c.tokens[token]
	c.mu.RUnlock()
	if !ok || !now.Before(t.until) {
		return Claims{}, false
	}
	return t.claims, true
}

func (c *verifiedTokens) put(token string, claims Claims, now time.Time) {
	until := now.Add(verifiedFor)
	if claims.Expires.Before(until) {
		until = claims.Expires
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = map[string]verifiedToken{}
	}
	if _, ok := c.tokens[token]; !ok && len(c.tokens) >= maxVerified {
		c.evict(now)
	}
	c.tokens[token] = verifiedToken{claims: claims, until: until}
}

// evict makes room for one token: the expired go, or else the one that
// would expire first, so that more live tokens than maxVerified still
// find most of themselves remembered.
func (c *verifiedTokens) evict(now time.Time) {
	var first string
	var firstUntil time.Time
	for k, t := range c.tokens {
		if !now.Before(t.until) {
			delete(c.tokens, k)
			continue
		}
		if first == "" || t.until.Before(firstUntil) {
			first, firstUntil = k, t.until
		}
	}
	if len(c.tokens) >= maxVerified {
		delete(c.tokens, first)
	}
}

// NewVerifier returns a Verifier for cfg.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	if cfg.Audience == "" {
		return nil, errors.New("pushauth: audience is required")
	}
	var opts []idtoken.ClientOption
	if cfg.HTTPClient != nil {
		opts = append(opts, idtoken.WithHTTPClient(cfg.HTTPClient))
	}
	v, err := idtoken.NewValidator(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("pushauth: new validator: %w", err)
	}
	return &Verifier{cfg: cfg, validator: v, now: time.Now}, nil
}

// Verify checks the bearer token of r and returns its claims. Every error
// wraps ErrUnauthenticated and never contains the token.
func (v *Verifier) Verify(ctx context.Context, r *http.Request) (Claims, error) {
	token, err := bearerToken(r)
	if err != nil {
		return Claims{}, err
	}
	now := v.now()
	if c, ok := v.verified.get(token, now); ok {
		return c, nil
	}
	c, err := v.verify(ctx, token)
	if err != nil {
		return Claims{}, err
	}
	v.verified.put(token, c, now)
	return c, nil
}

// verify checks token in full: signature, audience and expiry (idtoken),
// then issuer and email.
func (v *Verifier) verify(ctx context.Context, token string) (Claims, error) {
	unverified, err := parseUnverified(token)
	if err != nil {
		return Claims{}, err
	}
	// Google ID tokens are RS256; refusing anything else up front keeps
	// idtoken from fetching the IAP (ES256) key set for nothing.
	if unverified.alg != "RS256" {
		return Claims{}, fmt.Errorf("%w: unsupported signing algorithm %.20q", ErrUnauthenticated, unverified.alg)
	}

	payload, err := v.validator.Validate(ctx, token, v.cfg.Audience)
	if err != nil {
		return Claims{}, v.explain(err, token, unverified.payload)
	}

	if !googleIssuers[payload.Issuer] {
		return Claims{}, fmt.Errorf("%w: wrong issuer %.100q", ErrUnauthenticated, payload.Issuer)
	}
	email, _ := payload.Claims["email"].(string)
	if v.cfg.ServiceAccount != "" {
		if email != v.cfg.ServiceAccount {
			return Claims{}, fmt.Errorf("%w: wrong email %.100q, want %q", ErrUnauthenticated, email, v.cfg.ServiceAccount)
		}
		if !emailVerified(payload.Claims["email_verified"]) {
			return Claims{}, fmt.Errorf("%w: email not verified", ErrUnauthenticated)
		}
	}
	return Claims{
		Email:    email,
		Subject:  payload.Subject,
		Issuer:   payload.Issuer,
		Audience: payload.Audience,
		Expires:  time.Unix(payload.Expires, 0),
	}, nil
}

// explain turns an idtoken error into a reason. idtoken has no sentinel
// errors; it checks audience, then expiry, then the signature, so the same
// checks on the unverified payload tell which one failed.
func (v *Verifier) explain(err error, token string, p *idtoken.Payload) error {
	switch {
	case p.Audience != v.cfg.Audience:
		return fmt.Errorf("%w: wrong audience %.200q, want %q", ErrUnauthenticated, p.Audience, v.cfg.Audience)
	case time.Now().Unix() > p.Expires:
		return fmt.Errorf("%w: token expired at %s", ErrUnauthenticated, time.Unix(p.Expires, 0).UTC().Format(time.RFC3339))
	case errors.Is(err, rsa.ErrVerification):
		return fmt.Errorf("%w: bad signature", ErrUnauthenticated)
	case strings.Contains(err.Error(), "could not find matching cert"):
		return fmt.Errorf("%w: bad signature: unknown signing key", ErrUnauthenticated)
	}
	// What is left is fetching or decoding Google's key set. Those errors
	// are about the key endpoint, but make sure before quoting one.
	if leaks(err.Error(), token) {
		return fmt.Errorf("%w: %w: cannot verify signature", ErrUnauthenticated, ErrKeysUnavailable)
	}
	return fmt.Errorf("%w: %w: cannot verify signature: %w", ErrUnauthenticated, ErrKeysUnavailable, err)
}

func bearerToken(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", fmt.Errorf("%w: missing Authorization header", ErrUnauthenticated)
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: Authorization header is not a bearer token", ErrUnauthenticated)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: empty bearer token", ErrUnauthenticated)
	}
	return token, nil
}

type unverifiedToken struct {
	alg     string
	payload *idtoken.Payload
}

// parseUnverified decodes the token without trusting it, so that a malformed
// token gets a clear reason and idtoken's error can be explained. Decoding
// errors are not quoted: they can echo bytes of the token.
func parseUnverified(token string) (unverifiedToken, error) {
	malformed := fmt.Errorf("%w: malformed token", ErrUnauthenticated)
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return unverifiedToken{}, malformed
	}
	for _, p := range parts {
		if _, err := base64.RawURLEncoding.DecodeString(p); err != nil {
			return unverifiedToken{}, malformed
		}
	}
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var header struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hb, &header); err != nil {
		return unverifiedToken{}, malformed
	}
	payload, err := idtoken.ParsePayload(token)
	if err != nil {
		return unverifiedToken{}, malformed
	}
	return unverifiedToken{alg: header.Alg, payload: payload}, nil
}

// leaks reports whether text quotes the token or its signature.
func leaks(text, token string) bool {
	sig := token[strings.LastIndexByte(token, '.')+1:]
	return strings.Contains(text, token) || (len(sig) > 16 && strings.Contains(text, sig))
}

// Google emits email_verified as a JSON boolean; some older tokens used the
// string "true".
func emailVerified(v any) bool {
	switch b := v.(type) {
	case bool:
		return b
	case string:
		return b == "true"
	}
	return false
}
