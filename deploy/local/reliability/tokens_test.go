//go:build reliability

package reliability

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/deploy/local/standin/pushrelay"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/pushauth"
)

// TestBadTokensAreRefused pushes through relays whose OIDC tokens are
// wrong in every way a token can be: ingest answers 401 to every attempt
// and writes nothing, and the messages end in the dead-letter topic. A
// relay with a good token, against the same ingest, gets its records
// stored.
//
// Ingest runs in process here: its verifier must fetch the local signer's
// keys, which the deployed command cannot be told to do (it always asks
// Google).
func TestBadTokensAreRefused(t *testing.T) { each(t, testBadTokensAreRefused) }

func testBadTokensAreRefused(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	signer := pushauthtest.NewSigner(t)
	const pusher = "pubsub-push@reliability.iam.gserviceaccount.com"
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	endpoint := fmt.Sprintf("http://127.0.0.1:%d/", port)

	ctx := context.Background()
	verifier, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: endpoint, ServiceAccount: pusher, HTTPClient: signer.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, h.ingestDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cfg, err := ingest.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ing, err := stack.ServeIngest(cfg, ingest.Deps{DB: pool, Verifier: verifier}, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ing.Close(context.Background()) })

	forger := pushauthtest.NewSignerWithKeyID(t, signer.KeyID()) // same key id, other key
	static := func(tok string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return tok, nil }
	}
	claims := func(edit func(map[string]any)) func(context.Context) (string, error) {
		c := pushauthtest.IDTokenClaims(endpoint, pusher, time.Hour)
		edit(c)
		return static(signer.Token(t, c))
	}
	cases := []struct {
		name  string
		token func(context.Context) (string, error) // nil: no Authorization header
	}{
		{"no token", nil},
		{"not a JWT", static("not-a-token")},
		{"forged signature", forger.TokenSource(endpoint, pusher, time.Hour)},
		{"expired", signer.TokenSource(endpoint, pusher, -10*time.Minute)},
		{"wrong audience", signer.TokenSource("https://other.example/push", pusher, time.Hour)},
		{"wrong email", signer.TokenSource(endpoint, "intruder@evil.iam.gserviceaccount.com", time.Hour)},
		{"unverified email", claims(func(c map[string]any) { c["email_verified"] = false })},
		{"wrong issuer", claims(func(c map[string]any) { c["iss"] = "https://issuer.example" })},
	}
	const perCase = 50
	// The group returns once its parallel cases are done.
	t.Run("bad", func(t *testing.T) {
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				topic, err := h.ps.Topic(ctx, fmt.Sprintf("bad-%d", i))
				if err != nil {
					t.Fatal(err)
				}
				sub, err := h.ps.Subscription(ctx, fmt.Sprintf("bad-%d", i), topic)
				if err != nil {
					t.Fatal(err)
				}
				dlq, err := h.ps.Topic(ctx, fmt.Sprintf("bad-%d-dead-letter", i))
				if err != nil {
					t.Fatal(err)
				}
				relay, rec := h.relay(t, sub, endpoint, func(c *pushrelay.Config) {
					c.TokenSource = tc.token
					c.DeadLetterTopic = dlq
					c.MaxDeliveryAttempts = 2
					c.MinBackoff = 50 * time.Millisecond
				})
				if _, err := h.publish(ctx, topic, h.calls(t, perCase), 0); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := relay.WaitFor(ctx, func(s pushrelay.Stats) bool { return s.DeadLettered == perCase }); err != nil {
					t.Fatal(err)
				}
				st := relay.Stats()
				if statuses := rec.Statuses(); len(statuses) != 1 || statuses[http.StatusUnauthorized] != 2*perCase || st.Acked != 0 {
					t.Fatalf("statuses %v, relay %+v; want %d answers, all 401, and no acknowledgement", statuses, st, 2*perCase)
				}
			})
		}
	})
	if n := h.count(t, "SELECT (SELECT count(*) FROM apigee.api_calls) + (SELECT count(*) FROM apigee.ingest_rejects)"); n != 0 {
		t.Fatalf("%d rows written for unauthenticated pushes", n)
	}

	// The same ingest accepts the real pusher.
	relay, rec := h.relay(t, h.sub, endpoint, func(c *pushrelay.Config) {
		c.TokenSource = signer.TokenSource(endpoint, pusher, time.Hour)
	})
	good := h.calls(t, perCase)
	if _, err := h.publish(ctx, h.topic, good, 0); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, perCase, 30*time.Second)
	h.assertStoredOnce(t, good)
	if rec.Failed() != 0 {
		t.Fatalf("valid token: statuses %v", rec.Statuses())
	}
	t.Logf("%d kinds of bad token × %d messages: every attempt 401, all dead-lettered, 0 rows; valid token: %d stored",
		len(cases), perCase, perCase)
}
