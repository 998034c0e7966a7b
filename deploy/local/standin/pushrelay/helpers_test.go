package pushrelay

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"

	"apigee-timescale/deploy/local/standin/pubsubtest"
)

const project = "proj"

// fixture is a pstest server and a real client connected to it.
type fixture struct {
	srv    *pstest.Server
	client *pubsub.Client
}

func newFixture(tb testing.TB, opts ...pstest.ServerReactorOption) *fixture {
	tb.Helper()
	f := pubsubtest.New(tb, project, opts...)
	return &fixture{srv: f.Server, client: f.Client}
}

// topic creates a topic and returns its full name.
func (f *fixture) topic(tb testing.TB, id string) string {
	tb.Helper()
	name := "projects/" + project + "/topics/" + id
	if _, err := f.client.TopicAdminClient.CreateTopic(context.Background(), &pubsubpb.Topic{Name: name}); err != nil {
		tb.Fatalf("create topic %s: %v", id, err)
	}
	return name
}

// subscription creates a pull subscription to topic and returns its full name.
func (f *fixture) subscription(tb testing.TB, id, topic string) string {
	tb.Helper()
	name := "projects/" + project + "/subscriptions/" + id
	_, err := f.client.SubscriptionAdminClient.CreateSubscription(context.Background(), &pubsubpb.Subscription{
		Name:               name,
		Topic:              topic,
		AckDeadlineSeconds: 10,
	})
	if err != nil {
		tb.Fatalf("create subscription %s: %v", id, err)
	}
	return name
}

// waitAcked waits until pstest has recorded an ack for message id.
func (f *fixture) waitAcked(tb testing.TB, id string) *pstest.Message {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := f.srv.Message(id)
		if m != nil && m.Acks > 0 {
			return m
		}
		if time.Now().After(deadline) {
			tb.Fatalf("message %s never acked in pstest: %+v", id, m)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pullOne receives one message from sub with a plain subscriber.
func (f *fixture) pullOne(tb testing.TB, sub string) *pubsub.Message {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got *pubsub.Message
	err := f.client.Subscriber(sub).Receive(ctx, func(_ context.Context, m *pubsub.Message) {
		m.Ack()
		if got == nil {
			got = m
		}
		cancel()
	})
	if err != nil || got == nil {
		tb.Fatalf("pull from %s: %v (got %v)", sub, err, got)
	}
	return got
}

// delivery is one request the endpoint received.
type delivery struct {
	at     time.Time
	header http.Header
	body   []byte
	env    envelope // decoded when the body is an envelope
	id     string   // message ID, from the envelope or the metadata header
	n      int      // how many times this ID has been delivered, this one included
}

// endpoint is an httptest server that records deliveries and answers
// with the status respond returns; respond may block on ctx.
type endpoint struct {
	*httptest.Server
	respond func(ctx context.Context, d delivery) int

	mu          sync.Mutex
	got         []delivery
	perID       map[string]int
	inFlight    int
	maxInFlight int
}

func newEndpoint(tb testing.TB, respond func(ctx context.Context, d delivery) int) *endpoint {
	tb.Helper()
	e := &endpoint{respond: respond, perID: map[string]int{}}
	e.Server = httptest.NewServer(http.HandlerFunc(e.serve))
	tb.Cleanup(e.Close)
	return e
}

func (e *endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	d := delivery{at: time.Now(), header: r.Header.Clone(), body: body}
	if json.Unmarshal(body, &d.env) == nil && d.env.Message.MessageID != "" {
		d.id = d.env.Message.MessageID
	} else {
		d.id = r.Header.Get("X-Goog-Pubsub-Message-Id")
	}
	e.mu.Lock()
	e.perID[d.id]++
	d.n = e.perID[d.id]
	e.got = append(e.got, d)
	e.inFlight++
	e.maxInFlight = max(e.maxInFlight, e.inFlight)
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.inFlight--
		e.mu.Unlock()
	}()
	w.WriteHeader(e.respond(r.Context(), d))
}

func (e *endpoint) deliveries() []delivery {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]delivery(nil), e.got...)
}

func (e *endpoint) counts() (perID map[string]int, maxInFlight int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	perID = make(map[string]int, len(e.perID))
	for k, v := range e.perID {
		perID[k] = v
	}
	return perID, e.maxInFlight
}

func alwaysAck(context.Context, delivery) int { return http.StatusOK }

// running is a Relay whose Run goroutine the test can stop.
type running struct {
	*Relay
	cancel context.CancelFunc
	done   chan error
}

// start runs a Relay for cfg until the test ends or stop is called. Unless
// cfg says otherwise, it polls every 2 ms to keep tests quick. tweaks
// adjust the Relay before it runs.
func start(tb testing.TB, cfg Config, tweaks ...func(*Relay)) *running {
	tb.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 2 * time.Millisecond
	}
	r, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	for _, tweak := range tweaks {
		tweak(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &running{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		if err := rr.stop(10 * time.Second); err != nil {
			tb.Errorf("stop relay: %v", err)
		}
	})
	return rr
}

// stop cancels Run and waits for it; calling it again returns nil.
func (rr *running) stop(timeout time.Duration) error {
	rr.cancel()
	select {
	case err, ok := <-rr.done:
		if ok {
			close(rr.done)
		}
		return err
	case <-time.After(timeout):
		return context.DeadlineExceeded
	}
}

// waitFor fails the test if cond does not hold within 10 s.
func waitFor(tb testing.TB, r *running, cond func(Stats) bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitFor(ctx, cond); err != nil {
		tb.Fatal(err)
	}
}

func acked(n int64) func(Stats) bool { return func(s Stats) bool { return s.Acked >= n } }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
