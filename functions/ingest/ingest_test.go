package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/record"
)

func TestEnvelopeForms(t *testing.T) {
	now := time.Now().UTC()
	logEntry := func(id string) string {
		return `{"insertId":"x","logName":"projects/p/logs/apigee","jsonPayload":` + rec(id, now) + `}`
	}
	tests := []struct {
		name string
		body string
		hdr  map[string]string
		ids  []string // message_ids stored
		psID string   // pubsub_message_id stored with them
	}{
		{"wrapped, one record", wrapped("ps-1", rec("w1", now), nil), nil, []string{"w1"}, "ps-1"},
		{"wrapped with legacy spelling only", `{"message":{"data":"` + b64(rec("w2", now)) + `","message_id":"ps-2","publish_time":"2026-01-01T00:00:00Z"},"subscription":"s"}`, nil, []string{"w2"}, "ps-2"},
		{"unwrapped with metadata headers", rec("u1", now), map[string]string{hdrMessageID: "ps-3", hdrSubscription: "projects/p/subscriptions/s", hdrPublishTime: now.Format(time.RFC3339Nano)}, []string{"u1"}, "ps-3"},
		{"direct JSON record", rec("d1", now), nil, []string{"d1"}, ""},
		{"cloud logging LogEntry", wrapped("ps-4", logEntry("l1"), nil), nil, []string{"l1"}, "ps-4"},
		{"JSON array", wrapped("ps-5", "["+rec("a1", now)+","+rec("a2", now)+","+rec("a3", now)+"]", nil), nil, []string{"a1", "a2", "a3"}, "ps-5"},
		{"newline-delimited", wrapped("ps-6", rec("n1", now)+"\n"+rec("n2", now)+"\r\n\n"+rec("n3", now)+"\n", nil), nil, []string{"n1", "n2", "n3"}, "ps-6"},
	}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		s := newService(t, db, nil)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if code := post(t, s, tt.body, tt.hdr); code != http.StatusNoContent {
					t.Fatalf("status %d, want 204", code)
				}
				for _, id := range tt.ids {
					var ps *string
					var verb string
					if err := db.Admin.QueryRow(context.Background(), "SELECT pubsub_message_id, request_verb FROM apigee.api_calls WHERE message_id = $1", id).Scan(&ps, &verb); err != nil {
						t.Fatalf("record %s not stored: %v", id, err)
					}
					got := ""
					if ps != nil {
						got = *ps
					}
					if got != tt.psID || verb != "GET" {
						t.Fatalf("record %s: pubsub id %q verb %q, want %q GET", id, got, verb, tt.psID)
					}
				}
			})
		}
		t.Run("cloudevent", func(t *testing.T) {
			e := event.New()
			e.SetID("ce-1")
			e.SetType("google.cloud.pubsub.topic.v1.messagePublished")
			e.SetSource("//pubsub.googleapis.com/projects/p/topics/t")
			if err := e.SetData("application/json", json.RawMessage(wrapped("ps-ce", rec("ce1", now), nil))); err != nil {
				t.Fatal(err)
			}
			if err := s.HandleEvent(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id = 'ce1' AND pubsub_message_id = 'ps-ce'"); n != 1 {
				t.Fatalf("cloudevent record stored %d times", n)
			}
		})
		if n := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects"); n != 0 {
			t.Fatalf("%d rejects for good input", n)
		}
	})
}

func b64(s string) string {
	return strings.TrimSuffix(strings.TrimSuffix(wrappedData(s), "\""), "\"")
}

func wrappedData(s string) string {
	var env struct {
		Message struct {
			Data string `json:"data"`
		} `json:"message"`
	}
	json.Unmarshal([]byte(wrapped("x", s, nil)), &env)
	return env.Message.Data
}

func TestBadInputIsQuarantined(t *testing.T) {
	now := time.Now().UTC()
	many := make([]string, 10001)
	for i := range many {
		many[i] = `{"schema":"apigee.call.v1"}`
	}
	tests := []struct {
		name, body  string
		reason      string
		field       string
		wantRejects int
	}{
		{"bad base64", `{"message":{"data":"!!!not base64!!!","messageId":"b1"}}`, ReasonBadBase64, "", 1},
		// PostgreSQL cannot store NUL: kept raw, the reject would fail its
		// batch on every redelivery.
		{"bad base64, NUL in the message id and attributes", `{"message":{"data":"!!","messageId":"b\u0000x","attributes":{"tenant":"\u0000"}}}`, ReasonBadBase64, "", 1},
		{"envelope not JSON", `{"message":`, ReasonBadEnvelope, "", 1},
		{"envelope without data", `{"message":{"messageId":"b2"}}`, ReasonBadEnvelope, "", 1},
		{"data not JSON", wrapped("b3", "hello, world", nil), record.ReasonNotJSON, "", 1},
		{"wrong schema version", wrapped("b4", strings.Replace(rec("r4", now), "apigee.call.v1", "apigee.call.v9", 1), nil), record.ReasonUnknownSchema, "schema", 1},
		{"missing required field", wrapped("b5", strings.Replace(rec("r5", now), `"apiproxy":"orders-v1",`, "", 1), nil), record.ReasonMissingField, "apiproxy", 1},
		{"bad timestamp", wrapped("b6", strings.Replace(rec("r6", now), now.Format(time.RFC3339Nano), "yesterday", 1), nil), record.ReasonInvalidField, "received_at", 1},
		{"status out of range", wrapped("b7", strings.Replace(rec("r7", now), `"200"`, `"999"`, 1), nil), record.ReasonInvalidField, "response_status_code", 1},
		{"oversized record", wrapped("b8", rec("r8", now, `"request_path":"/`+strings.Repeat("a", 1<<20)+`"`), nil), record.ReasonRecordTooLarge, "", 1},
		{"10,001 records", wrapped("b9", "["+strings.Join(many, ",")+"]", nil), record.ReasonTooManyRecords, "", 1},
		{"one bad record among good ones", wrapped("b10", rec("g1", now)+"\n{\"schema\":\n"+rec("g2", now), nil), record.ReasonNotJSON, "", 1},
	}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		s := newService(t, db, nil)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects")
				if code := post(t, s, tt.body, nil); code != http.StatusNoContent {
					t.Fatalf("status %d, want 204 (poison input is acknowledged)", code)
				}
				n := checkLatestRejects(t, db, tt.wantRejects, tt.reason, tt.field)
				if after := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects"); after-before != tt.wantRejects || n != tt.wantRejects {
					t.Fatalf("%d new rejects, want %d", after-before, tt.wantRejects)
				}
			})
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id IN ('g1', 'g2')"); n != 2 {
			t.Fatalf("good records beside a bad one: %d stored, want 2", n)
		}
		t.Run("redelivered poison is quarantined once", func(t *testing.T) {
			body := wrapped("b-again", "not json", nil)
			for range 3 {
				if code := post(t, s, body, nil); code != http.StatusNoContent {
					t.Fatalf("status %d", code)
				}
			}
			if n := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects WHERE pubsub_message_id = 'b-again'"); n != 1 {
				t.Fatalf("%d rejects for one redelivered message, want 1", n)
			}
		})
		t.Run("SQL-looking strings are stored verbatim", func(t *testing.T) {
			evil := `'); DROP TABLE apigee.api_calls; -- \" \\ ☃`
			body := wrapped("sql", rec("sql-1", now, fmt.Sprintf(`"useragent":%q`, evil)), nil)
			if code := post(t, s, body, nil); code != http.StatusNoContent {
				t.Fatalf("status %d", code)
			}
			var ua string
			if err := db.Admin.QueryRow(context.Background(), "SELECT useragent FROM apigee.api_calls WHERE message_id = 'sql-1'").Scan(&ua); err != nil || ua != evil {
				t.Fatalf("useragent %q (err %v), want %q", ua, err, evil)
			}
		})
	})
}

// checkLatestRejects checks that the n latest rejects have the reason and
// field, a detail and a payload, and returns how many there are.
func checkLatestRejects(t *testing.T, db *testkit.DB, n int, wantReason, wantField string) int {
	t.Helper()
	rows, err := db.Admin.Query(context.Background(),
		"SELECT reason, coalesce(field, ''), detail, octet_length(payload) FROM apigee.ingest_rejects ORDER BY ingested_at DESC, record_index LIMIT $1", n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := 0
	for rows.Next() {
		var reason, field, detail string
		var size int
		if err := rows.Scan(&reason, &field, &detail, &size); err != nil {
			t.Fatal(err)
		}
		if reason != wantReason || field != wantField || detail == "" || size == 0 {
			t.Fatalf("quarantined as %s/%q (%q, %d bytes), want %s/%q with detail and payload", reason, field, detail, size, wantReason, wantField)
		}
		got++
	}
	return got
}

// deliverConcurrently posts every body with at most workers in flight and
// returns the status codes seen.
func deliverConcurrently(t testing.TB, h http.Handler, bodies []string, workers int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	ch := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range ch {
				c := post(t, h, b, nil)
				mu.Lock()
				codes[c]++
				mu.Unlock()
			}
		}()
	}
	for _, b := range bodies {
		ch <- b
	}
	close(ch)
	wg.Wait()
	return codes
}

// Metadata PostgreSQL cannot store (NUL, invalid UTF-8) is cleaned, so the
// record is stored and acknowledged rather than failing on every redelivery.
func TestUnstorableMetadataIsCleaned(t *testing.T) {
	now := time.Now().UTC()
	data := b64(rec("meta-1", now))
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		s := newService(t, db, nil)
		body := "{\"message\":{\"data\":\"" + data + "\",\"messageId\":\"m\\u0000\xff1\"},\"subscription\":\"s\\u0000\"}"
		if code := post(t, s, body, nil); code != http.StatusNoContent {
			t.Fatalf("status %d, want 204", code)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id = 'meta-1' AND pubsub_message_id = 'm\uFFFD1'"); n != 1 {
			t.Fatalf("%d rows with the cleaned message id, want 1", n)
		}
	})
}

func TestDuplicateDeliveriesMakeOneRow(t *testing.T) {
	const n = 10000
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		s := newService(t, db, nil)
		now := time.Now().UTC()
		bodies := make([]string, 0, 2*n)
		for i := range n {
			b := wrapped(fmt.Sprintf("ps-%d", i), rec(fmt.Sprintf("dup-%d", i), now.Add(-time.Duration(i)*time.Millisecond*37)), nil)
			bodies = append(bodies, b, b) // each delivered twice, side by side
		}
		codes := deliverConcurrently(t, s, bodies, 200)
		if codes[http.StatusNoContent] != 2*n {
			t.Fatalf("answers %v, want %d × 204", codes, 2*n)
		}
		if got := count(t, db, "SELECT count(*) FROM apigee.api_calls"); got != n {
			t.Fatalf("%d rows, want %d", got, n)
		}
		var inserted, dups int
		if err := db.Admin.QueryRow(context.Background(), "SELECT sum(rows_inserted), sum(rows_duplicate) FROM apigee.ingest_batches").Scan(&inserted, &dups); err != nil {
			t.Fatal(err)
		}
		if inserted != n || dups != n {
			t.Fatalf("batches account %d inserted and %d duplicates, want %d and %d", inserted, dups, n, n)
		}
	})
}

func TestThousandConcurrentRequestsShareBatches(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		s := newService(t, db, nil)
		now := time.Now().UTC()
		bodies := make([]string, 1000)
		for i := range bodies {
			bodies[i] = wrapped(fmt.Sprintf("c-%d", i), rec(fmt.Sprintf("conc-%d", i), now), nil)
		}
		codes := deliverConcurrently(t, s, bodies, 1000)
		if codes[http.StatusNoContent] != 1000 {
			t.Fatalf("answers %v", codes)
		}
		if got := count(t, db, "SELECT count(*) FROM apigee.api_calls"); got != 1000 {
			t.Fatalf("%d rows, want 1000", got)
		}
		batches := count(t, db, "SELECT count(*) FROM apigee.ingest_batches")
		if batches > 200 {
			t.Fatalf("1000 concurrent deliveries took %d batches: group commit is not grouping", batches)
		}
		t.Logf("1000 concurrent deliveries → %d batches", batches)
	})
}

func TestDatabaseOutage(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		_, dsn := db.Login(t, "apigee_ingest")
		proxy, viaProxy := testkit.NewProxy(t, dsn)
		s := newServiceDSN(t, viaProxy, func(c *Config, _ *Deps) {
			c.RequestTimeout = 2 * time.Second
			c.Batch.WriteTimeout = time.Second
		})
		now := time.Now().UTC()
		bodies := make([]string, 200)
		for i := range bodies {
			bodies[i] = wrapped(fmt.Sprintf("o-%d", i), rec(fmt.Sprintf("out-%d", i), now), nil)
		}
		// Warm the pool, then cut the database off.
		if code := post(t, s, bodies[0], nil); code != http.StatusNoContent {
			t.Fatalf("warm-up: %d", code)
		}
		proxy.Cut()
		start := time.Now()
		codes := deliverConcurrently(t, s, bodies, 50)
		if codes[http.StatusNoContent] != 0 || codes[http.StatusServiceUnavailable]+codes[http.StatusTooManyRequests] != len(bodies) {
			t.Fatalf("during the outage: %v, want only 503/429", codes)
		}
		if el := time.Since(start); el > 30*time.Second {
			t.Fatalf("answers took %v during the outage", el)
		}
		// Pub/Sub redelivers everything unacknowledged once the database is back.
		proxy.Restore()
		deadline := time.Now().Add(30 * time.Second)
		for {
			codes = deliverConcurrently(t, s, bodies, 50)
			if codes[http.StatusNoContent] == len(bodies) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after restore: %v", codes)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if got := count(t, db, "SELECT count(*) FROM apigee.api_calls"); got != len(bodies) {
			t.Fatalf("%d rows after the outage, want %d exactly once each", got, len(bodies))
		}
	})
}

func TestPushAuthentication(t *testing.T) {
	const aud = "https://ingest.example.run.app/"
	const sa = "pubsub-push@proj.iam.gserviceaccount.com"
	signer := pushauthtest.NewSigner(t)
	v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	db := testkit.New(t, testkit.TimescaleDB)
	s := newService(t, db, func(_ *Config, d *Deps) { d.Verifier = v })
	other := pushauthtest.NewSigner(t)
	expired := pushauthtest.IDTokenClaims(aud, sa, time.Hour)
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	expired["iat"] = time.Now().Add(-2 * time.Hour).Unix()
	unverified := pushauthtest.IDTokenClaims(aud, sa, time.Hour)
	unverified["email_verified"] = false
	var seq atomic.Int32
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"valid", signer.IDToken(t, aud, sa, time.Hour), http.StatusNoContent},
		{"missing", "", http.StatusUnauthorized},
		{"garbage", "not.a.jwt", http.StatusUnauthorized},
		{"other key", other.IDToken(t, aud, sa, time.Hour), http.StatusUnauthorized},
		{"expired", signer.Token(t, expired), http.StatusUnauthorized},
		{"wrong audience", signer.IDToken(t, "https://elsewhere/", sa, time.Hour), http.StatusUnauthorized},
		{"wrong email", signer.IDToken(t, aud, "attacker@evil.iam.gserviceaccount.com", time.Hour), http.StatusUnauthorized},
		{"email not verified", signer.Token(t, unverified), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := count(t, db, "SELECT count(*) FROM apigee.api_calls") + count(t, db, "SELECT count(*) FROM apigee.ingest_rejects")
			id := fmt.Sprintf("auth-%d", seq.Add(1))
			hdr := map[string]string{}
			if tt.token != "" {
				hdr["Authorization"] = "Bearer " + tt.token
			}
			if code := post(t, s, wrapped(id, rec(id, time.Now()), nil), hdr); code != tt.want {
				t.Fatalf("status %d, want %d", code, tt.want)
			}
			after := count(t, db, "SELECT count(*) FROM apigee.api_calls") + count(t, db, "SELECT count(*) FROM apigee.ingest_rejects")
			wantNew := 0
			if tt.want == http.StatusNoContent {
				wantNew = 1
			}
			if after-before != wantNew {
				t.Fatalf("%d rows written, want %d", after-before, wantNew)
			}
		})
	}
}

// When Google's signing keys cannot be fetched, the token may be fine: the
// answer is 503 (Pub/Sub retries), not 401, and nothing is written.
func TestPushKeysUnavailable(t *testing.T) {
	const aud = "https://ingest.example.run.app/"
	const sa = "pubsub-push@proj.iam.gserviceaccount.com"
	signer := pushauthtest.NewSigner(t)
	down := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
		return nil, errors.New("certificate endpoint unreachable")
	})}
	v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: down})
	if err != nil {
		t.Fatal(err)
	}
	db := testkit.New(t, testkit.TimescaleDB)
	s := newService(t, db, func(_ *Config, d *Deps) { d.Verifier = v })
	hdr := map[string]string{"Authorization": "Bearer " + signer.IDToken(t, aud, sa, time.Hour)}
	if code := post(t, s, wrapped("keys-down", rec("keys-down", time.Now()), nil), hdr); code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", code)
	}
	if n := count(t, db, "SELECT count(*) FROM apigee.api_calls") + count(t, db, "SELECT count(*) FROM apigee.ingest_rejects"); n != 0 {
		t.Fatalf("%d rows written, want 0", n)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A delivery over the body limit is quarantined unread (its first bytes
// kept) and acknowledged, whether the limit is above or below the 64 KiB
// that is kept.
func TestOversizedDeliveryIsQuarantined(t *testing.T) {
	db := testkit.New(t, testkit.TimescaleDB)
	for _, limit := range []int{1000, 100 << 10} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			s := newService(t, db, func(c *Config, _ *Deps) { c.MaxBodyBytes = limit })
			id := fmt.Sprintf("big-%d", limit)
			body := wrapped(id, rec(id, time.Now(), fmt.Sprintf(`"useragent":%q`, strings.Repeat("x", limit))), nil)
			if code := post(t, s, body, nil); code != http.StatusNoContent {
				t.Fatalf("status %d, want 204", code)
			}
			var reason string
			var size int
			if err := db.Admin.QueryRow(context.Background(),
				"SELECT reason, octet_length(payload) FROM apigee.ingest_rejects ORDER BY ingested_at DESC LIMIT 1").Scan(&reason, &size); err != nil {
				t.Fatal(err)
			}
			if reason != ReasonDeliveryTooLarge || size != min(limit+1, 64<<10) {
				t.Fatalf("quarantined as %s with %d bytes, want %s with %d", reason, size, ReasonDeliveryTooLarge, min(limit+1, 64<<10))
			}
			if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id = $1", id); n != 0 {
				t.Fatalf("oversized delivery stored %d rows", n)
			}
		})
	}
}
