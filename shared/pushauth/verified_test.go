package pushauth_test

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/shared/pushauth"
)

// uncachedKeys serves signer's key set without a max-age, so that idtoken
// fetches it for every token it checks: the count of fetches is the count
// of full checks.
func uncachedKeys(signer *pushauthtest.Signer, fetches *atomic.Int32) *http.Client {
	inner := signer.HTTPClient().Transport
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fetches.Add(1)
		resp, err := inner.RoundTrip(r)
		if err == nil {
			resp.Header.Set("Cache-Control", "no-store")
		}
		return resp, err
	})}
}

func TestVerifiedTokensAreRemembered(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	hour := signer.IDToken(t, aud, sa, time.Hour)
	other := signer.Token(t, withClaim(pushauthtest.IDTokenClaims(aud, sa, time.Hour), "sub", "2"))
	short := signer.IDToken(t, aud, sa, 2*time.Minute)
	forged := tamper(t, pushauthtest.NewSignerWithKeyID(t, signer.KeyID()).IDToken(t, aud, sa, time.Hour), hour)
	for _, tc := range []struct {
		name   string
		tokens []string
		later  time.Duration // how far the cache's clock moves before the last call
		checks int32         // full checks (key set fetches) expected
		fail   bool          // every call fails
	}{
		{name: "the same token twice is checked once", tokens: []string{hour, hour}, checks: 1},
		{name: "another token is checked", tokens: []string{hour, other}, checks: 2},
		{name: "a token is checked again after verifiedFor", tokens: []string{hour, hour}, later: pushauth.VerifiedFor + time.Second, checks: 2},
		{name: "a token is not remembered past its expiry", tokens: []string{short, short}, later: 3 * time.Minute, checks: 2},
		{name: "a refused token is checked every time", tokens: []string{forged, forged}, checks: 2, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fetches atomic.Int32
			v := newVerifier(t, pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: uncachedKeys(signer, &fetches)})
			now := time.Now()
			pushauth.SetClock(v, func() time.Time { return now })
			for i, tok := range tc.tokens {
				if i == len(tc.tokens)-1 {
					now = now.Add(tc.later)
				}
				c, err := v.Verify(context.Background(), request("Bearer "+tok))
				if (err != nil) != tc.fail {
					t.Fatalf("call %d: err = %v, want failure %v", i, err, tc.fail)
				}
				if err == nil && (c.Email != sa || c.Audience != aud) {
					t.Errorf("call %d: claims %+v", i, c)
				}
			}
			if n := fetches.Load(); n != tc.checks {
				t.Errorf("%d full checks, want %d", n, tc.checks)
			}
		})
	}
}

func TestVerifiedTokensAreBounded(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	var fetches atomic.Int32
	v := newVerifier(t, pushauth.Config{Audience: aud, HTTPClient: uncachedKeys(signer, &fetches)})
	now := time.Now()
	pushauth.SetClock(v, func() time.Time { return now })
	tokens := make([]string, pushauth.MaxVerified+1)
	for i := range tokens {
		tokens[i] = signer.Token(t, withClaim(pushauthtest.IDTokenClaims(aud, sa, time.Hour), "sub", strconv.Itoa(i)))
	}
	verify := func(tok string) {
		t.Helper()
		if _, err := v.Verify(context.Background(), request("Bearer "+tok)); err != nil {
			t.Fatal(err)
		}
	}
	checked := func() int32 { return fetches.Swap(0) }
	// tokens[0] first, then a second later half of the others, then a
	// minute later the rest: they expire in that order.
	t0 := now
	half := pushauth.MaxVerified / 2
	for i, tok := range tokens[:pushauth.MaxVerified] {
		switch i {
		case 1:
			now = t0.Add(time.Second)
		case half:
			now = t0.Add(time.Minute)
		}
		verify(tok)
	}
	if n := pushauth.VerifiedTokens(v); n != pushauth.MaxVerified {
		t.Fatalf("%d tokens remembered, want %d", n, pushauth.MaxVerified)
	}
	checked()
	// Full, none expired: one more evicts only the first to expire,
	// tokens[0]; every other one is still answered without a check.
	verify(tokens[pushauth.MaxVerified])
	for _, tok := range tokens[1:] {
		verify(tok)
	}
	if n := checked(); n != 1 {
		t.Errorf("%d full checks for a new token and the %d kept, want 1", n, pushauth.MaxVerified)
	}
	// Past the second group's verifiedFor: making room sweeps out every
	// expired token, and only those.
	now = t0.Add(time.Second + pushauth.VerifiedFor)
	verify(tokens[0])
	if n := checked(); n != 1 {
		t.Errorf("the evicted token: %d full checks, want 1", n)
	}
	if n, want := pushauth.VerifiedTokens(v), pushauth.MaxVerified-half+2; n != want {
		t.Errorf("%d tokens remembered after the sweep, want %d", n, want)
	}
}

// TestVerifyConcurrently is for -race: deliveries check the same and
// different tokens at once.
func TestVerifyConcurrently(t *testing.T) {
	signer := pushauthtest.NewSigner(t)
	v := newVerifier(t, pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	tokens := []string{signer.IDToken(t, aud, sa, time.Hour), signer.Token(t, withClaim(pushauthtest.IDTokenClaims(aud, sa, time.Hour), "sub", "2"))}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			for range 20 {
				if _, err := v.Verify(context.Background(), request("Bearer "+tokens[i%2])); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func withClaim(c map[string]any, k string, v any) map[string]any {
	c[k] = v
	return c
}

// BenchmarkVerify is one push request's token check: the first sight of a
// token, and the later ones that the verified-token cache answers.
func BenchmarkVerify(b *testing.B) {
	signer := pushauthtest.NewSigner(b)
	for _, bc := range []struct {
		name  string
		fresh bool
	}{{"first", true}, {"again", false}} {
		b.Run(bc.name, func(b *testing.B) {
			v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
			if err != nil {
				b.Fatal(err)
			}
			r := request("Bearer " + signer.IDToken(b, aud, sa, time.Hour))
			if bc.fresh {
				// Every call a new clock past verifiedFor: a miss each time.
				now := time.Now()
				pushauth.SetClock(v, func() time.Time { now = now.Add(pushauth.VerifiedFor); return now })
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
