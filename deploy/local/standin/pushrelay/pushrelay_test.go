package pushrelay

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/shared/pushauth"
)

func TestWrappedEnvelope(t *testing.T) {
	data := []byte("{\"x\":1}\n\x00\xff") // not UTF-8: must survive base64
	tests := []struct {
		name        string
		attrs       map[string]string
		orderingKey string
		deadLetter  bool
		want        func(id, publishTime string) map[string]any
	}{
		{
			name:        "attributes and ordering key",
			attrs:       map[string]string{"a": "1", "b": "two"},
			orderingKey: "key-1",
			want: func(id, pt string) map[string]any {
				return map[string]any{
					"message": map[string]any{
						"data":         base64.StdEncoding.EncodeToString(data),
						"attributes":   map[string]any{"a": "1", "b": "two"},
						"messageId":    id,
						"message_id":   id,
						"publishTime":  pt,
						"publish_time": pt,
						"orderingKey":  "key-1",
					},
					"subscription": "projects/proj/subscriptions/s",
				}
			},
		},
		{
			name: "bare message",
			want: func(id, pt string) map[string]any {
				return map[string]any{
					"message": map[string]any{
						"data":         base64.StdEncoding.EncodeToString(data),
						"messageId":    id,
						"message_id":   id,
						"publishTime":  pt,
						"publish_time": pt,
					},
					"subscription": "projects/proj/subscriptions/s",
				}
			},
		},
		{
			name:       "deliveryAttempt with a dead-letter topic",
			attrs:      map[string]string{"a": "1"},
			deadLetter: true,
			want: func(id, pt string) map[string]any {
				return map[string]any{
					"message": map[string]any{
						"data":         base64.StdEncoding.EncodeToString(data),
						"attributes":   map[string]any{"a": "1"},
						"messageId":    id,
						"message_id":   id,
						"publishTime":  pt,
						"publish_time": pt,
					},
					"subscription":    "projects/proj/subscriptions/s",
					"deliveryAttempt": float64(1),
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			cfg := Config{Client: f.client, Subscription: "s"}
			if tc.deadLetter {
				cfg.DeadLetterTopic = f.topic(t, "dlq")
			}
			ep := newEndpoint(t, alwaysAck)
			cfg.Endpoint = ep.URL
			r := start(t, cfg)

			id := f.srv.PublishOrdered(topic, data, tc.attrs, tc.orderingKey)
			waitFor(t, r, acked(1))

			got := ep.deliveries()
			if len(got) != 1 {
				t.Fatalf("%d deliveries, want 1", len(got))
			}
			d := got[0]
			var body map[string]any
			if err := json.Unmarshal(d.body, &body); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, d.body)
			}
			pt, _ := body["message"].(map[string]any)["publishTime"].(string)
			parsed, err := time.Parse(time.RFC3339Nano, pt)
			if err != nil || !strings.HasSuffix(pt, "Z") {
				t.Fatalf("publishTime %q is not RFC 3339 UTC: %v", pt, err)
			}
			if want := f.srv.Message(id).PublishTime; !parsed.Equal(want) {
				t.Errorf("publishTime = %s, want %s", parsed, want)
			}
			if want := tc.want(id, pt); !reflect.DeepEqual(body, want) {
				t.Errorf("body:\n got %s\nwant %s", d.body, mustJSON(t, want))
			}
			if got := d.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if got := d.header.Get("Authorization"); got != "" {
				t.Errorf("Authorization sent without a token source: %q", got)
			}
			if got := d.header.Get("X-Goog-Pubsub-Message-Id"); got != "" {
				t.Errorf("metadata header in wrapped mode: %q", got)
			}
		})
	}
}

func TestUnwrapped(t *testing.T) {
	data := []byte("raw \x00 body")
	attrs := map[string]string{
		"Content-Type":             "application/json",
		"x-custom":                 "v",
		"x-goog-pubsub-message-id": "spoofed",
		"Authorization":            "spoofed",
		"bad name":                 "dropped",
	}
	tests := []struct {
		name          string
		writeMetadata bool
	}{
		{name: "write metadata", writeMetadata: true},
		{name: "body only", writeMetadata: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			ep := newEndpoint(t, alwaysAck)
			r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL,
				NoWrapper: true, WriteMetadata: tc.writeMetadata})

			id := f.srv.PublishOrdered(topic, data, attrs, "key-1")
			waitFor(t, r, acked(1))
			got := ep.deliveries()
			if len(got) != 1 {
				t.Fatalf("%d deliveries, want 1", len(got))
			}
			d := got[0]
			if !bytes.Equal(d.body, data) {
				t.Errorf("body = %q, want %q", d.body, data)
			}
			if got := d.header.Get("Authorization"); got != "" {
				t.Errorf("Authorization = %q, want none", got)
			}
			if !tc.writeMetadata {
				for k := range d.header {
					if strings.HasPrefix(strings.ToLower(k), "x-goog-pubsub-") || k == "X-Custom" {
						t.Errorf("header %s sent without WriteMetadata", k)
					}
				}
				return
			}
			pt := d.header.Get("X-Goog-Pubsub-Publish-Time")
			if parsed, err := time.Parse(time.RFC3339Nano, pt); err != nil || !parsed.Equal(f.srv.Message(id).PublishTime) {
				t.Errorf("x-goog-pubsub-publish-time = %q (%v)", pt, err)
			}
			want := map[string]string{
				"X-Goog-Pubsub-Message-Id":        id,
				"X-Goog-Pubsub-Subscription-Name": "projects/proj/subscriptions/s",
				"X-Goog-Pubsub-Ordering-Key":      "key-1",
				"Content-Type":                    "application/json",
				"X-Custom":                        "v",
			}
			for k, v := range want {
				if got := d.header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("header %s = %q, want [%q]", k, got, v)
				}
			}
			if got := d.header.Get("Bad Name"); got != "" {
				t.Errorf("invalid attribute name sent as header")
			}
		})
	}
}

func TestAckStatuses(t *testing.T) {
	for _, code := range []int{102, 200, 201, 202, 204} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			cfg := Config{Client: f.client, Subscription: "s", MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}
			var requests atomic.Int32
			if code == http.StatusProcessing {
				// net/http treats a 1xx as interim and waits for the final
				// answer, so a server cannot send 102 as one; a transport can.
				cfg.Endpoint = "http://push.invalid/"
				cfg.HTTPClient = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
					requests.Add(1)
					return &http.Response{StatusCode: code, Body: http.NoBody, Request: r}, nil
				})}
			} else {
				ep := newEndpoint(t, func(context.Context, delivery) int {
					requests.Add(1)
					return code
				})
				cfg.Endpoint = ep.URL
			}
			r := start(t, cfg)
			id := f.srv.Publish(topic, []byte("x"), nil)
			waitFor(t, r, acked(1))
			m := f.waitAcked(t, id)
			// A nack would have been retried within MaxBackoff.
			time.Sleep(100 * time.Millisecond)
			if n := requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			if s := r.Stats(); s.Acked != 1 || s.Nacked != 0 || s.Delivered != 1 {
				t.Errorf("stats = %+v", s)
			}
			if m.Acks != 1 {
				t.Errorf("pstest acks = %d, want 1", m.Acks)
			}
		})
	}
}

// Everything but the five ack codes is a nack, 2xx and 3xx included.
func TestNonAckStatuses(t *testing.T) {
	for _, code := range []int{203, 205, 302, 400, 401, 404, 500, 503} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			ep := newEndpoint(t, func(_ context.Context, d delivery) int {
				if d.n == 1 {
					return code
				}
				return http.StatusNoContent
			})
			r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL,
				MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})
			f.srv.Publish(topic, []byte("x"), nil)
			waitFor(t, r, acked(1))
			if got := ep.deliveries(); len(got) != 2 {
				t.Errorf("%d deliveries, want 2", len(got))
			}
			if s := r.Stats(); s.Nacked != 1 || s.Retried != 1 {
				t.Errorf("stats = %+v, want 1 nack and 1 retry", s)
			}
		})
	}
}

func TestRetryBackoff(t *testing.T) {
	const (
		minBackoff = 40 * time.Millisecond
		failures   = 3
	)
	tests := []struct {
		name        string
		fail        func(ctx context.Context) int // 0: abort the connection
		ackDeadline time.Duration                 // generous except where it is the point
		minWait     time.Duration                 // time a failed attempt takes at least
	}{
		{name: "500", ackDeadline: 5 * time.Second, fail: func(context.Context) int { return http.StatusInternalServerError }},
		{name: "429", ackDeadline: 5 * time.Second, fail: func(context.Context) int { return http.StatusTooManyRequests }},
		{name: "timeout", ackDeadline: 300 * time.Millisecond, minWait: 300 * time.Millisecond, fail: func(ctx context.Context) int {
			select {
			case <-ctx.Done(): // the relay gave up
			case <-time.After(5 * time.Second):
			}
			return http.StatusOK // too late to count
		}},
		{name: "transport error", ackDeadline: 5 * time.Second, fail: func(context.Context) int { return 0 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			ep := newEndpoint(t, func(ctx context.Context, d delivery) int {
				if d.n > failures {
					return http.StatusOK
				}
				code := tc.fail(ctx)
				if code == 0 {
					panic(http.ErrAbortHandler) // closes the connection, no response
				}
				return code
			})
			r := start(t, Config{
				Client: f.client, Subscription: "s", Endpoint: ep.URL,
				// A dead-letter topic puts deliveryAttempt in the envelope.
				DeadLetterTopic: f.topic(t, "dlq"), MaxDeliveryAttempts: 10,
				AckDeadline: tc.ackDeadline, MinBackoff: minBackoff, MaxBackoff: time.Second,
			})
			id := f.srv.Publish(topic, []byte("x"), nil)
			waitFor(t, r, acked(1))

			got := ep.deliveries()
			if len(got) != failures+1 {
				t.Fatalf("%d deliveries, want %d", len(got), failures+1)
			}
			var prevGap time.Duration
			for i, d := range got {
				if d.env.Message.MessageID != id || d.env.Message.MessageIDOld != id {
					t.Errorf("delivery %d: message id %q/%q, want %q", i+1, d.env.Message.MessageID, d.env.Message.MessageIDOld, id)
				}
				if d.env.DeliveryAttempt != i+1 {
					t.Errorf("delivery %d: deliveryAttempt = %d", i+1, d.env.DeliveryAttempt)
				}
				if i == 0 {
					continue
				}
				gap := d.at.Sub(got[i-1].at)
				// The ack deadline runs from before the request is sent, so
				// the endpoint may see a little less of it.
				if want := tc.minWait*9/10 + backoff(minBackoff, time.Second, i); gap < want {
					t.Errorf("delivery %d came %s after the previous one, want at least %s", i+1, gap, want)
				}
				if gap <= prevGap {
					t.Errorf("delivery %d: gap %s not longer than the previous %s", i+1, gap, prevGap)
				}
				prevGap = gap
			}
			if s := r.Stats(); s.Nacked != failures || s.Retried != failures || s.Acked != 1 || s.Delivered != failures+1 {
				t.Errorf("stats = %+v", s)
			}
			// The relay held the message throughout: one lease, one ack.
			if m := f.waitAcked(t, id); m.Deliveries != 1 || m.Acks != 1 {
				t.Errorf("pstest deliveries = %d, acks = %d, want 1 and 1", m.Deliveries, m.Acks)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{10, 20, 40, 80, 100, 100}
	for i, w := range want {
		if got := backoff(10*time.Millisecond, 100*time.Millisecond, i+1); got != w*time.Millisecond {
			t.Errorf("backoff after %d failures = %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
}

func TestDeadLetter(t *testing.T) {
	const attempts = 3
	f := newFixture(t)
	topic := f.topic(t, "t")
	f.subscription(t, "s", topic)
	dlqTopic := f.topic(t, "dlq")
	dlqSub := f.subscription(t, "dlq-sub", dlqTopic)
	ep := newEndpoint(t, func(context.Context, delivery) int { return http.StatusServiceUnavailable })
	r := start(t, Config{
		Client: f.client, Subscription: "s", Endpoint: ep.URL,
		DeadLetterTopic: "dlq", MaxDeliveryAttempts: attempts,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	id := f.srv.PublishOrdered(topic, []byte("poison"), map[string]string{"a": "b"}, "k")
	waitFor(t, r, func(s Stats) bool { return s.DeadLettered == 1 })

	dead := f.pullOne(t, dlqSub)
	if string(dead.Data) != "poison" || dead.OrderingKey != "k" {
		t.Errorf("dead-lettered message = %q, ordering key %q", dead.Data, dead.OrderingKey)
	}
	wantAttrs := map[string]string{
		"a": "b",
		"CloudPubSubDeadLetterSourceDeliveryCount":       "3",
		"CloudPubSubDeadLetterSourceSubscription":        "s",
		"CloudPubSubDeadLetterSourceSubscriptionProject": "proj",
		"CloudPubSubDeadLetterSourceTopicPublishTime":    dead.Attributes["CloudPubSubDeadLetterSourceTopicPublishTime"],
	}
	if !reflect.DeepEqual(dead.Attributes, wantAttrs) {
		t.Errorf("attributes = %v, want %v", dead.Attributes, wantAttrs)
	}
	if pt, err := time.Parse(time.RFC3339Nano, wantAttrs["CloudPubSubDeadLetterSourceTopicPublishTime"]); err != nil ||
		pt.Sub(f.srv.Message(id).PublishTime).Abs() >= time.Millisecond {
		t.Errorf("source publish time %q (%v)", wantAttrs["CloudPubSubDeadLetterSourceTopicPublishTime"], err)
	}

	got := ep.deliveries()
	if len(got) != attempts {
		t.Fatalf("%d deliveries, want %d", len(got), attempts)
	}
	for i, d := range got {
		if d.env.DeliveryAttempt != i+1 || d.id != id {
			t.Errorf("delivery %d: id %s, deliveryAttempt %d", i+1, d.id, d.env.DeliveryAttempt)
		}
	}
	if m := f.waitAcked(t, id); m.Acks != 1 {
		t.Errorf("source message acks = %d, want 1", m.Acks)
	}
	if s := r.Stats(); s.Acked != 0 || s.Nacked != attempts || s.DeadLettered != 1 {
		t.Errorf("stats = %+v", s)
	}
}

// A message stays with the relay while the dead-letter topic refuses it
// (say the Pub/Sub service agent lacks publish rights), and is forwarded
// once it takes it.
func TestDeadLetterPublishFails(t *testing.T) {
	deny := &denyPublish{topic: "projects/proj/topics/dlq"}
	deny.on.Store(true)
	f := newFixture(t, pstest.ServerReactorOption{FuncName: "Publish", Reactor: deny})
	topic := f.topic(t, "t")
	f.subscription(t, "s", topic)
	dlqSub := f.subscription(t, "dlq-sub", f.topic(t, "dlq"))
	ep := newEndpoint(t, func(context.Context, delivery) int { return http.StatusInternalServerError })
	r := start(t, Config{
		Client: f.client, Subscription: "s", Endpoint: ep.URL,
		DeadLetterTopic: "dlq", MaxDeliveryAttempts: 1,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	id := f.srv.Publish(topic, []byte("x"), nil)
	waitFor(t, r, func(s Stats) bool { return s.DeadLetterErrors >= 2 })
	if m := f.srv.Message(id); m.Acks != 0 {
		t.Fatalf("message acked although it could not be dead-lettered")
	}
	deny.on.Store(false)
	waitFor(t, r, func(s Stats) bool { return s.DeadLettered == 1 })
	if got := f.pullOne(t, dlqSub); string(got.Data) != "x" {
		t.Errorf("dead-lettered %q", got.Data)
	}
	if n := len(ep.deliveries()); n != 1 {
		t.Errorf("%d deliveries, want 1 (no more attempts after the last one)", n)
	}
	f.waitAcked(t, id)
}

// denyPublish is a pstest reactor refusing publishes to one topic while on.
type denyPublish struct {
	topic string
	on    atomic.Bool
}

func (d *denyPublish) React(req any) (bool, any, error) {
	if pr, ok := req.(*pubsubpb.PublishRequest); ok && pr.GetTopic() == d.topic && d.on.Load() {
		return true, nil, status.Error(codes.PermissionDenied, "no publish permission")
	}
	return false, nil, nil
}

func TestFlowControl(t *testing.T) {
	const maxInFlight = 8
	f := newFixture(t)
	topic := f.topic(t, "t")
	f.subscription(t, "s", topic)

	var relay atomic.Pointer[running] // set before anything is published
	var mu sync.Mutex
	var limits []int // window at each request of the failing message
	ep := newEndpoint(t, func(_ context.Context, d delivery) int {
		if d.env.Message.Attributes["fail"] == "" {
			time.Sleep(20 * time.Millisecond) // let requests overlap
			return http.StatusOK
		}
		mu.Lock()
		limits = append(limits, relay.Load().Stats().InFlightLimit)
		mu.Unlock()
		if d.n <= 4 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL, MaxInFlight: maxInFlight,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	relay.Store(r)

	if s := r.Stats(); s.InFlightLimit != 1 {
		t.Errorf("initial window = %d, want 1", s.InFlightLimit)
	}
	for i := range 40 {
		f.srv.Publish(topic, []byte(fmt.Sprint(i)), nil)
	}
	waitFor(t, r, acked(40))
	if s := r.Stats(); s.InFlightLimit != maxInFlight {
		t.Errorf("window after 40 successes = %d, want %d", s.InFlightLimit, maxInFlight)
	}
	if _, peak := ep.counts(); peak > maxInFlight || peak < 2 {
		t.Errorf("peak concurrency %d, want 2..%d", peak, maxInFlight)
	}

	f.srv.Publish(topic, []byte("failing"), map[string]string{"fail": "4"})
	waitFor(t, r, acked(41))
	mu.Lock()
	defer mu.Unlock()
	if want := []int{8, 4, 2, 1, 1}; !reflect.DeepEqual(limits, want) {
		t.Errorf("window before each attempt = %v, want %v (halved per failure, at least 1)", limits, want)
	}
	if s := r.Stats(); s.InFlightLimit != 2 {
		t.Errorf("window after the success = %d, want 2", s.InFlightLimit)
	}
}

func TestWindow(t *testing.T) {
	w := newWindow(3)
	ctx := context.Background()
	if err := w.acquire(ctx); err != nil {
		t.Fatal(err)
	}
	// The window is 1: a second acquire waits.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := w.acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second acquire on a window of 1: %v", err)
	}
	granted := make(chan struct{})
	go func() {
		if w.acquire(ctx) == nil {
			close(granted)
		}
	}()
	time.Sleep(10 * time.Millisecond)
	w.release(true) // window 2; the waiter gets the freed slot
	select {
	case <-granted:
	case <-time.After(time.Second):
		t.Fatal("waiter not granted after release")
	}
	if in, limit := w.state(); in != 1 || limit != 2 {
		t.Errorf("inFlight=%d limit=%d, want 1 and 2", in, limit)
	}
	w.release(true)
	w.release(true) // capped at 3
	if _, limit := w.state(); limit != 3 {
		t.Errorf("limit %d, want 3", limit)
	}
}

func TestBearerToken(t *testing.T) {
	const sa = "pusher@proj.iam.gserviceaccount.com"
	signer := pushauthtest.NewSigner(t)
	f := newFixture(t)
	topic := f.topic(t, "t")
	f.subscription(t, "s", topic)

	var verifier atomic.Pointer[pushauth.Verifier] // set before anything is published
	var claims atomic.Value
	ep := newEndpoint(t, func(ctx context.Context, d delivery) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
		req.Header = d.header
		c, err := verifier.Load().Verify(ctx, req)
		if err != nil {
			return http.StatusUnauthorized
		}
		claims.Store(c)
		return http.StatusOK
	})
	v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{
		Audience: ep.URL, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	verifier.Store(v)
	tokens := signer.TokenSource(ep.URL, sa, time.Hour)
	var calls atomic.Int32
	r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		TokenSource: func(ctx context.Context) (string, error) {
			if calls.Add(1) == 1 {
				return "", errors.New("metadata server unavailable")
			}
			return tokens(ctx)
		}})
	f.srv.Publish(topic, []byte("x"), nil)
	waitFor(t, r, acked(1))
	c, _ := claims.Load().(pushauth.Claims)
	if c.Email != sa || c.Audience != ep.URL {
		t.Errorf("verified claims = %+v", c)
	}
	// The first attempt failed before sending: no request, one nack.
	if s := r.Stats(); s.Delivered != 1 || s.Nacked != 1 || len(ep.deliveries()) != 1 {
		t.Errorf("stats = %+v, %d requests", s, len(ep.deliveries()))
	}
}

func TestThousandMessagesExactlyOnce(t *testing.T) {
	const n, maxInFlight = 1000, 50
	f := newFixture(t)
	topic := f.topic(t, "t")
	f.subscription(t, "s", topic)
	ep := newEndpoint(t, alwaysAck)
	r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL, MaxInFlight: maxInFlight})
	ids := make(map[string]bool, n)
	for i := range n {
		ids[f.srv.Publish(topic, []byte(fmt.Sprint(i)), map[string]string{"i": fmt.Sprint(i)})] = true
	}
	waitFor(t, r, acked(n))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitIdle(ctx, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	perID, peak := ep.counts()
	if len(perID) != n {
		t.Errorf("%d distinct messages delivered, want %d", len(perID), n)
	}
	for id, c := range perID {
		if !ids[id] {
			t.Errorf("unknown message %s delivered", id)
		}
		if c != 1 {
			t.Errorf("message %s delivered %d times", id, c)
		}
	}
	if peak > maxInFlight {
		t.Errorf("peak concurrency %d above MaxInFlight %d", peak, maxInFlight)
	}
	if s := r.Stats(); s.Acked != n || s.Delivered != n || s.Nacked != 0 || s.Held != 0 || s.InFlight != 0 {
		t.Errorf("stats = %+v", s)
	}
	for id := range ids {
		f.waitAcked(t, id)
	}
}

func TestShutdown(t *testing.T) {
	t.Run("messages backing off go back to the subscription", func(t *testing.T) {
		f := newFixture(t)
		topic := f.topic(t, "t")
		f.subscription(t, "s", topic)
		failing := newEndpoint(t, func(context.Context, delivery) int { return http.StatusInternalServerError })
		r1 := start(t, Config{Client: f.client, Subscription: "s", Endpoint: failing.URL,
			MaxInFlight: 10, MinBackoff: time.Hour, MaxBackoff: time.Hour})
		want := map[string]bool{}
		for i := range 3 {
			want[f.srv.Publish(topic, []byte(fmt.Sprint(i)), nil)] = true
		}
		// The window starts at 1 and halves on failure, so the three are
		// tried one after another; all then wait an hour.
		waitFor(t, r1, func(s Stats) bool { return s.Nacked == 3 })
		began := time.Now()
		if err := r1.stop(5 * time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if d := time.Since(began); d > 2*time.Second {
			t.Errorf("Run took %s to return", d)
		}

		ok := newEndpoint(t, alwaysAck)
		r2 := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ok.URL})
		waitFor(t, r2, acked(3))
		perID, _ := ok.counts()
		if len(perID) != 3 {
			t.Errorf("second relay got %v", perID)
		}
		for id := range want {
			if perID[id] != 1 {
				t.Errorf("message %s delivered %d times after restart", id, perID[id])
			}
		}
	})

	t.Run("an in-flight request is let finish", func(t *testing.T) {
		f := newFixture(t)
		topic := f.topic(t, "t")
		f.subscription(t, "s", topic)
		release := make(chan struct{})
		ep := newEndpoint(t, func(context.Context, delivery) int {
			<-release
			return http.StatusOK
		})
		r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL})
		id := f.srv.Publish(topic, []byte("x"), nil)
		waitFor(t, r, func(s Stats) bool { return s.InFlight == 1 })

		stopped := make(chan error, 1)
		go func() { stopped <- r.stop(10 * time.Second) }()
		select {
		case err := <-stopped:
			t.Fatalf("Run returned (%v) with a request in flight", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		if err := <-stopped; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if s := r.Stats(); s.Acked != 1 || s.Held != 0 {
			t.Errorf("stats = %+v", s)
		}
		if m := f.waitAcked(t, id); m.Acks != 1 {
			t.Errorf("pstest acks = %d", m.Acks)
		}
	})
}

// The relay keeps extending the lease of a message it is still retrying,
// however long that takes; without that, the subscription would hand the
// message out again. pstest's clock is moved forward in steps shorter than
// the lease so that every step finds the lease renewed.
func TestLeaseRenewal(t *testing.T) {
	tests := []struct {
		name      string
		renewal   time.Duration
		redeliver bool
	}{
		{name: "renewed", renewal: 2 * time.Millisecond, redeliver: false},
		{name: "not renewed (control)", renewal: time.Hour, redeliver: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			topic := f.topic(t, "t")
			f.subscription(t, "s", topic)
			var offset atomic.Int64
			f.srv.SetTimeNowFunc(func() time.Time { return time.Now().Add(time.Duration(offset.Load())) })
			ep := newEndpoint(t, func(context.Context, delivery) int { return http.StatusInternalServerError })
			r := start(t, Config{Client: f.client, Subscription: "s", Endpoint: ep.URL,
				MinBackoff: time.Hour, MaxBackoff: time.Hour},
				func(r *Relay) { r.leaseRenewal = tc.renewal })
			id := f.srv.Publish(topic, []byte("x"), nil)
			waitFor(t, r, func(s Stats) bool { return s.Nacked == 1 })

			// Ten minutes in 20 s steps against a 60 s lease.
			for range 30 {
				offset.Add(int64(20 * time.Second))
				time.Sleep(20 * time.Millisecond)
			}
			m := f.srv.Message(id)
			if redelivered := m.Deliveries > 1; redelivered != tc.redeliver {
				t.Errorf("pstest deliveries = %d, want redelivery %v", m.Deliveries, tc.redeliver)
			}
			if !tc.redeliver {
				if n := len(ep.deliveries()); n != 1 {
					t.Errorf("%d requests, want 1", n)
				}
				if s := r.Stats(); s.Held != 1 || s.LeaseErrors != 0 {
					t.Errorf("stats = %+v", s)
				}
			}
		})
	}
}

func TestNew(t *testing.T) {
	f := newFixture(t)
	valid := Config{Client: f.client, Subscription: "s", Endpoint: "http://127.0.0.1:1/push"}
	r, err := New(valid)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c := r.cfg
	if c.AckDeadline != 10*time.Second || c.MinBackoff != 10*time.Second || c.MaxBackoff != 600*time.Second ||
		c.MaxDeliveryAttempts != 5 || c.MaxInFlight != 100 || c.MaxOutstanding != 1000 || c.PollInterval != 50*time.Millisecond || c.HTTPClient == nil {
		t.Errorf("defaults not applied: %+v", c)
	}
	if r.subName != "projects/proj/subscriptions/s" {
		t.Errorf("subscription = %s", r.subName)
	}

	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no client", func(c *Config) { c.Client = nil }},
		{"no subscription", func(c *Config) { c.Subscription = "" }},
		{"no endpoint", func(c *Config) { c.Endpoint = "" }},
		{"relative endpoint", func(c *Config) { c.Endpoint = "/push" }},
		{"metadata without NoWrapper", func(c *Config) { c.WriteMetadata = true }},
		{"max backoff below min", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }},
		{"negative in-flight", func(c *Config) { c.MaxInFlight = -1 }},
		{"malformed subscription", func(c *Config) { c.Subscription = "projects/proj/topics/s" }},
		{"malformed dead-letter topic", func(c *Config) { c.DeadLetterTopic = "projects/proj/dlq" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.edit(&cfg)
			if _, err := New(cfg); err == nil {
				t.Error("New succeeded")
			}
		})
	}
}

// The default client must not follow redirects: Pub/Sub treats a 3xx as a
// failed delivery.
func TestDefaultClientDoesNotFollowRedirects(t *testing.T) {
	f := newFixture(t)
	var hits atomic.Int32
	ep := newEndpoint(t, func(context.Context, delivery) int { hits.Add(1); return http.StatusOK })
	redirect := httptest.NewServer(http.RedirectHandler(ep.URL, http.StatusTemporaryRedirect))
	t.Cleanup(redirect.Close)
	r, err := New(Config{Client: f.client, Subscription: "s", Endpoint: redirect.URL})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.cfg.HTTPClient.Post(redirect.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || hits.Load() != 0 || acknowledges(resp.StatusCode) {
		t.Errorf("status %d, %d hits on the redirect target", resp.StatusCode, hits.Load())
	}
}

func TestTimestamp(t *testing.T) {
	base := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	tests := []struct {
		ns   int
		want string
	}{
		{0, "2026-03-04T04:06:07Z"},
		{120_000_000, "2026-03-04T04:06:07.120Z"},
		{123_456_000, "2026-03-04T04:06:07.123456Z"},
		{123_456_789, "2026-03-04T04:06:07.123456789Z"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := timestamp(base.Add(time.Duration(tc.ns))); got != tc.want {
				t.Errorf("timestamp = %s, want %s", got, tc.want)
			}
		})
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
