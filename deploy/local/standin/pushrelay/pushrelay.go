// Package pushrelay delivers the messages of a Pub/Sub subscription to an
// HTTP endpoint the way a Pub/Sub push subscription does. The in-process fake
// (pstest) stores push configs but never pushes; the relay pulls through the
// real client and pushes in its place, for the local stack and for tests.
//
// What it reproduces: the wrapped JSON envelope or the unwrapped body with
// metadata headers, the acknowledging status codes (102, 200, 201, 202, 204),
// the ack deadline as request timeout, exponential retry backoff with the
// same message ID, dead-lettering after a number of delivery attempts, the
// push flow-control window (halved on each failure, grown on each success)
// and an optional OIDC bearer token.
//
// The relay pulls with unary Pull calls through the client's
// SubscriptionAdminClient, keeps each message leased while it retries it
// itself, and acks it only once the endpoint acknowledged it or it was
// dead-lettered, so retry timing is the relay's, not the server's. Unary
// pulls (rather than Subscriber.Receive) give the relay the ack IDs, so that
// on shutdown it can stop pulling first and then nack what it holds: with a
// streaming pull, pstest pushes nacked messages straight back into the
// closing stream, where they stay leased until their deadline expires.
// In-flight requests are let finish. Delivery is at-least-once, as with
// Pub/Sub.
//
// Configure dead-lettering on the relay, not on the subscription: the
// subscription sees one delivery per relay lease, and a relay restart
// starts a message's attempt count afresh.
package pushrelay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

// Defaults of Config fields left zero.
const (
	DefaultAckDeadline         = 10 * time.Second
	DefaultMinBackoff          = 10 * time.Second
	DefaultMaxBackoff          = 600 * time.Second
	DefaultMaxDeliveryAttempts = 5
	DefaultMaxInFlight         = 100
	DefaultMaxOutstanding      = 1000
	DefaultPollInterval        = 50 * time.Millisecond
)

// Pub/Sub identifies its push requests with this user agent.
const userAgent = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"

// Lease handling: held messages get leaseDuration on receipt and every
// leaseRenewal after, well inside the 10 s minimum subscription deadline.
const (
	leaseDuration = 60 * time.Second
	leaseRenewal  = 5 * time.Second
	maxPull       = 1000             // per Pull call
	rpcTimeout    = 30 * time.Second // for Pull, ack, nack, modack and dead-letter publish
)

// Config configures a Relay.
type Config struct {
	// Client is the Pub/Sub client to pull with, e.g. one connected to a
	// pstest server. Required. The relay does not close it.
	Client *pubsub.Client

	// Subscription is the subscription to relay, as an ID in Client's
	// project or as projects/P/subscriptions/S. Required.
	Subscription string

	// Endpoint is the URL each message is POSTed to. Required.
	Endpoint string

	// NoWrapper sends the raw message data as the body instead of the JSON
	// envelope, like --push-no-wrapper. Default false: wrapped.
	NoWrapper bool

	// WriteMetadata, with NoWrapper, adds the x-goog-pubsub-message-id,
	// -subscription-name, -publish-time and -ordering-key headers and one
	// header per attribute, like --push-no-wrapper-write-metadata.
	// Attributes that are not valid header fields, and those named
	// Authorization, Host or x-goog-pubsub-*, are not sent. Default false.
	WriteMetadata bool

	// AckDeadline is how long the endpoint has to answer; no answer in time
	// counts as a nack. Default 10 s (Pub/Sub's default; it allows 10–600 s).
	AckDeadline time.Duration

	// MinBackoff and MaxBackoff bound the wait before redelivering a nacked
	// message: MinBackoff after the first failure, doubling per failure, at
	// most MaxBackoff. Defaults 10 s and 600 s, as Pub/Sub's retry policy.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// DeadLetterTopic, when set, is the topic (ID in Client's project or
	// projects/P/topics/T) that a message is published to after
	// MaxDeliveryAttempts failed attempts; it is then acked. The forwarded
	// message keeps its data, attributes and ordering key, and gets the
	// CloudPubSubDeadLetterSource* attributes Pub/Sub adds. Setting it also
	// adds deliveryAttempt to the envelope, as Pub/Sub does only for
	// subscriptions with a dead-letter policy. Default empty: retry forever.
	DeadLetterTopic string

	// MaxDeliveryAttempts is the number of attempts before dead-lettering;
	// used only with DeadLetterTopic. Default 5. Pub/Sub accepts 5–100; the
	// relay accepts any positive number so tests stay short.
	MaxDeliveryAttempts int

	// MaxInFlight caps the flow-control window, the number of requests
	// awaiting an answer at once. The window starts at 1, grows by one per
	// acknowledged request and halves (never below 1) per failed one.
	// Default 100.
	MaxInFlight int

	// MaxOutstanding caps the messages the relay holds leased at once:
	// in flight, waiting for a window slot, or backing off. Default 1000.
	MaxOutstanding int

	// PollInterval is the pause after a Pull that returned nothing. It
	// bounds the latency of a message published to an idle subscription.
	// Default 50 ms.
	PollInterval time.Duration

	// TokenSource, when set, is called for every request and its result
	// sent as "Authorization: Bearer <token>", like a push subscription with
	// an OIDC service account. An error fails that attempt. Default nil: no
	// Authorization header.
	TokenSource func(ctx context.Context) (string, error)

	// HTTPClient sends the requests. Default: a client that keeps
	// MaxInFlight idle connections and, like Pub/Sub, does not follow
	// redirects (a 3xx is a nack). Its Timeout, if any, applies on top of
	// AckDeadline.
	HTTPClient *http.Client
}

// Stats are counters since the Relay was created.
type Stats struct {
	Delivered        int64 // requests sent, retries included
	Acked            int64 // messages the endpoint acknowledged
	Nacked           int64 // failed attempts: other status, transport error, timeout, token error
	Retried          int64 // attempts after a message's first
	DeadLettered     int64 // messages published to DeadLetterTopic
	DeadLetterErrors int64 // failed publishes to DeadLetterTopic, each retried after a backoff
	LeaseErrors      int64 // failed ack, nack or lease-extension calls; the message comes back when its lease expires
	InFlight         int   // requests awaiting an answer now
	InFlightLimit    int   // current flow-control window
	Held             int   // messages leased by the relay now
}

// Relay pushes the messages of one subscription to one endpoint.
type Relay struct {
	cfg     Config
	subName string // projects/P/subscriptions/S
	project string
	subID   string
	dlqName string // projects/P/topics/T, or empty
	window  *window

	// Lease timing; tests shorten them.
	leaseDuration time.Duration
	leaseRenewal  time.Duration

	running atomic.Bool
	mu      sync.Mutex
	leased  map[string]bool // ack IDs to keep extending
	freed   chan struct{}   // a held message was let go

	delivered    atomic.Int64
	acked        atomic.Int64
	nacked       atomic.Int64
	retried      atomic.Int64
	deadLettered atomic.Int64
	dlqErrors    atomic.Int64
	leaseErrors  atomic.Int64
	held         atomic.Int64
	lastActivity atomic.Int64 // unix nanos of the last message received or let go
}

// message is one pulled message, with the ack ID of this delivery.
type message struct {
	ackID       string
	id          string
	data        []byte
	attributes  map[string]string
	publishTime time.Time
	orderingKey string
}

// New validates cfg, applies defaults and returns a Relay; Run starts it.
func New(cfg Config) (*Relay, error) {
	if cfg.Client == nil {
		return nil, errors.New("pushrelay: client is required")
	}
	if cfg.Subscription == "" {
		return nil, errors.New("pushrelay: subscription is required")
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("pushrelay: endpoint %q is not an http(s) URL", cfg.Endpoint)
	}
	if cfg.WriteMetadata && !cfg.NoWrapper {
		return nil, errors.New("pushrelay: WriteMetadata needs NoWrapper")
	}
	setDefault(&cfg.AckDeadline, DefaultAckDeadline)
	setDefault(&cfg.MinBackoff, DefaultMinBackoff)
	setDefault(&cfg.MaxBackoff, DefaultMaxBackoff)
	setDefault(&cfg.MaxDeliveryAttempts, DefaultMaxDeliveryAttempts)
	setDefault(&cfg.MaxInFlight, DefaultMaxInFlight)
	setDefault(&cfg.MaxOutstanding, DefaultMaxOutstanding)
	setDefault(&cfg.PollInterval, DefaultPollInterval)
	switch {
	case cfg.AckDeadline < 0, cfg.MinBackoff < 0, cfg.MaxBackoff < 0, cfg.PollInterval < 0:
		return nil, errors.New("pushrelay: negative duration")
	case cfg.MaxBackoff < cfg.MinBackoff:
		return nil, fmt.Errorf("pushrelay: max backoff %s below min backoff %s", cfg.MaxBackoff, cfg.MinBackoff)
	case cfg.MaxDeliveryAttempts < 0, cfg.MaxInFlight < 0, cfg.MaxOutstanding < 0:
		return nil, errors.New("pushrelay: negative limit")
	}
	if cfg.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Keep one idle connection per possible in-flight request: with the
		// default total of 100, a wider window closes connections it just
		// used and fails deliveries with "too many idle connections".
		t.MaxIdleConnsPerHost = cfg.MaxInFlight
		t.MaxIdleConns = 0
		cfg.HTTPClient = &http.Client{
			Transport: t,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}

	subName, err := qualify(cfg.Client.Project(), "subscriptions", cfg.Subscription)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(subName, "/")
	r := &Relay{
		cfg:           cfg,
		subName:       subName,
		project:       parts[1],
		subID:         parts[3],
		window:        newWindow(cfg.MaxInFlight),
		leaseDuration: leaseDuration,
		leaseRenewal:  leaseRenewal,
		leased:        map[string]bool{},
		freed:         make(chan struct{}, 1),
	}
	if cfg.DeadLetterTopic != "" {
		if r.dlqName, err = qualify(cfg.Client.Project(), "topics", cfg.DeadLetterTopic); err != nil {
			return nil, err
		}
	}
	r.touch()
	return r, nil
}

// qualify turns an ID into projects/P/<kind>/ID and checks a full name.
func qualify(project, kind, nameOrID string) (string, error) {
	if !strings.Contains(nameOrID, "/") {
		nameOrID = "projects/" + project + "/" + kind + "/" + nameOrID
	}
	p := strings.Split(nameOrID, "/")
	if len(p) != 4 || p[0] != "projects" || p[1] == "" || p[2] != kind || p[3] == "" {
		return "", fmt.Errorf("pushrelay: %q is not projects/P/%s/ID", nameOrID, kind)
	}
	return nameOrID, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Run relays messages until ctx is done, then stops pulling, waits for
// in-flight requests to end (at most AckDeadline), acks what they
// acknowledged, nacks every other held message back to the subscription,
// and returns nil. It returns an error, after the same clean-up, if the
// subscription cannot be pulled from. Only one Run per Relay at a time; a
// Relay can be Run again after Run returned.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("pushrelay: already running")
	}
	defer r.running.Store(false)

	handlerCtx, stopHandlers := context.WithCancel(ctx)
	defer stopHandlers()
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	leasesDone := make(chan struct{})
	go func() {
		defer close(leasesDone)
		r.keepLeases(leaseCtx)
	}()

	var handlers sync.WaitGroup
	err := r.pull(handlerCtx, &handlers)
	stopHandlers() // on a pull error; a no-op when ctx is done
	handlers.Wait()
	stopLeases()
	<-leasesDone
	return err
}

// pull hands pulled messages to handlers until ctx is done or Pull fails.
// Pull calls are not cancelled with ctx: a cancelled call may have leased
// messages the relay would never see. Messages that arrive after ctx is
// done go straight back.
func (r *Relay) pull(ctx context.Context, handlers *sync.WaitGroup) error {
	for ctx.Err() == nil {
		free := r.cfg.MaxOutstanding - int(r.held.Load())
		if free <= 0 {
			select {
			case <-ctx.Done():
			case <-r.freed:
			}
			continue
		}
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rpcTimeout)
		resp, err := r.cfg.Client.SubscriptionAdminClient.Pull(callCtx, &pubsubpb.PullRequest{
			Subscription: r.subName,
			MaxMessages:  int32(min(free, maxPull)),
			// Deprecated and discouraged for production pulls, but without
			// it pstest holds an empty Pull for 500 ms and misses messages
			// published meanwhile.
			//lint:ignore SA1019 pstest needs it (see above)
			ReturnImmediately: true,
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("pushrelay: pull %s: %w", r.subName, err)
		}
		msgs := resp.GetReceivedMessages()
		if ctx.Err() != nil {
			for _, rm := range msgs {
				r.nack(ctx, rm.GetAckId())
			}
			return nil
		}
		ackIDs := make([]string, 0, len(msgs))
		for _, rm := range msgs {
			ackIDs = append(ackIDs, rm.GetAckId())
		}
		r.hold(ctx, ackIDs)
		for _, rm := range msgs {
			pm := rm.GetMessage()
			m := &message{
				ackID:       rm.GetAckId(),
				id:          pm.GetMessageId(),
				data:        pm.GetData(),
				attributes:  pm.GetAttributes(),
				publishTime: pm.GetPublishTime().AsTime(),
				orderingKey: pm.GetOrderingKey(),
			}
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				r.handle(ctx, m)
			}()
		}
		if len(msgs) == 0 {
			t := time.NewTimer(r.cfg.PollInterval)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return nil
}

// hold registers freshly pulled ack IDs and extends their lease at once:
// the subscription's own deadline may be as short as 10 s.
func (r *Relay) hold(ctx context.Context, ackIDs []string) {
	if len(ackIDs) == 0 {
		return
	}
	r.mu.Lock()
	for _, id := range ackIDs {
		r.leased[id] = true
	}
	r.mu.Unlock()
	r.held.Add(int64(len(ackIDs)))
	r.touch()
	r.modack(ctx, ackIDs, r.leaseDuration)
}

// release forgets a held message whatever became of it.
func (r *Relay) release(ackID string) {
	r.mu.Lock()
	delete(r.leased, ackID)
	r.mu.Unlock()
	r.held.Add(-1)
	r.touch()
	select {
	case r.freed <- struct{}{}:
	default:
	}
}

// keepLeases extends the lease of every held message until ctx is done.
func (r *Relay) keepLeases(ctx context.Context) {
	t := time.NewTicker(r.leaseRenewal)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		ids := make([]string, 0, len(r.leased))
		for id := range r.leased {
			ids = append(ids, id)
		}
		r.mu.Unlock()
		r.modack(ctx, ids, r.leaseDuration)
	}
}

func (r *Relay) modack(ctx context.Context, ackIDs []string, d time.Duration) {
	for len(ackIDs) > 0 {
		n := min(len(ackIDs), maxPull)
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rpcTimeout)
		err := r.cfg.Client.SubscriptionAdminClient.ModifyAckDeadline(callCtx, &pubsubpb.ModifyAckDeadlineRequest{
			Subscription:       r.subName,
			AckIds:             ackIDs[:n],
			AckDeadlineSeconds: int32(d / time.Second),
		})
		cancel()
		if err != nil {
			r.leaseErrors.Add(1)
		}
		ackIDs = ackIDs[n:]
	}
}

// ack and nack end the relay's hold on a message; they outlive ctx so that
// a shutdown does not leave the message leased until its deadline.
func (r *Relay) ack(ctx context.Context, ackID string) {
	r.release(ackID)
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rpcTimeout)
	defer cancel()
	err := r.cfg.Client.SubscriptionAdminClient.Acknowledge(callCtx, &pubsubpb.AcknowledgeRequest{
		Subscription: r.subName,
		AckIds:       []string{ackID},
	})
	if err != nil {
		r.leaseErrors.Add(1)
	}
}

func (r *Relay) nack(ctx context.Context, ackID string) {
	r.modack(ctx, []string{ackID}, 0)
}

// Stats returns a snapshot of the counters.
func (r *Relay) Stats() Stats {
	inFlight, limit := r.window.state()
	return Stats{
		Delivered:        r.delivered.Load(),
		Acked:            r.acked.Load(),
		Nacked:           r.nacked.Load(),
		Retried:          r.retried.Load(),
		DeadLettered:     r.deadLettered.Load(),
		DeadLetterErrors: r.dlqErrors.Load(),
		LeaseErrors:      r.leaseErrors.Load(),
		InFlight:         inFlight,
		InFlightLimit:    limit,
		Held:             int(r.held.Load()),
	}
}

// WaitFor polls Stats until cond holds or ctx is done. Tests that know how
// many messages they published wait with it, e.g. for
// s.Acked+s.DeadLettered == n.
func (r *Relay) WaitFor(ctx context.Context, cond func(Stats) bool) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if cond(r.Stats()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pushrelay: wait: %w (last stats %+v)", ctx.Err(), r.Stats())
		case <-t.C:
		}
	}
}

// WaitIdle waits until the relay holds no message and none was received or
// let go for quiet. The relay cannot see the subscription's backlog, so
// this is a heuristic: quiet must exceed PollInterval by a margin (four
// times is ample). Prefer WaitFor when the number of messages is known.
func (r *Relay) WaitIdle(ctx context.Context, quiet time.Duration) error {
	return r.WaitFor(ctx, func(s Stats) bool {
		return s.Held == 0 && time.Since(time.Unix(0, r.lastActivity.Load())) >= quiet
	})
}

func (r *Relay) touch() { r.lastActivity.Store(time.Now().UnixNano()) }

// handle owns one message until it is acked, dead-lettered or handed back.
func (r *Relay) handle(ctx context.Context, m *message) {
	attempts := 0
	for {
		if r.dlqName != "" && attempts >= r.cfg.MaxDeliveryAttempts {
			if err := r.deadLetter(ctx, m, attempts); err == nil {
				r.deadLettered.Add(1)
				r.ack(ctx, m.ackID)
				return
			}
			r.dlqErrors.Add(1)
		} else {
			if err := r.window.acquire(ctx); err != nil {
				r.release(m.ackID)
				r.nack(ctx, m.ackID) // shutting down before a slot came free
				return
			}
			attempts++
			ok := r.attempt(ctx, m, attempts)
			r.window.release(ok)
			if ok {
				r.acked.Add(1)
				r.ack(ctx, m.ackID)
				return
			}
			r.nacked.Add(1)
			if r.dlqName != "" && attempts >= r.cfg.MaxDeliveryAttempts {
				continue // dead-letter now, no point waiting
			}
		}
		t := time.NewTimer(backoff(r.cfg.MinBackoff, r.cfg.MaxBackoff, attempts))
		select {
		case <-ctx.Done():
			t.Stop()
			r.release(m.ackID)
			r.nack(ctx, m.ackID)
			return
		case <-t.C:
		}
	}
}

// backoff returns the wait after the given number of failed attempts.
func backoff(minB, maxB time.Duration, failures int) time.Duration {
	d := minB
	for i := 1; i < failures && d < maxB; i++ {
		d *= 2
	}
	return min(d, maxB)
}

// attempt POSTs m once and reports whether the endpoint acknowledged it.
// The request outlives ctx: a delivery under way when Run is stopped is let
// finish, so that its answer is not thrown away.
func (r *Relay) attempt(ctx context.Context, m *message, n int) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.AckDeadline)
	defer cancel()
	if n > 1 {
		r.retried.Add(1)
	}
	req, err := r.request(ctx, m, n)
	if err != nil {
		return false
	}
	r.delivered.Add(1)
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return false
	}
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return acknowledges(resp.StatusCode)
}

func acknowledges(status int) bool {
	switch status {
	case http.StatusProcessing, http.StatusOK, http.StatusCreated, http.StatusAccepted, http.StatusNoContent:
		return true
	}
	return false
}

func (r *Relay) request(ctx context.Context, m *message, attempt int) (*http.Request, error) {
	var body []byte
	if r.cfg.NoWrapper {
		body = m.data
	} else {
		env := envelope{
			Message: pushMessage{
				Data:         m.data,
				Attributes:   m.attributes,
				MessageID:    m.id,
				MessageIDOld: m.id,
				PublishTime:  timestamp(m.publishTime),
				PublishOld:   timestamp(m.publishTime),
				OrderingKey:  m.orderingKey,
			},
			Subscription: r.subName,
		}
		if r.dlqName != "" {
			env.DeliveryAttempt = attempt
		}
		var err error
		if body, err = json.Marshal(env); err != nil {
			return nil, fmt.Errorf("pushrelay: marshal envelope: %w", err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.Endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("pushrelay: new request: %w", err)
	}
	if !r.cfg.NoWrapper {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.cfg.WriteMetadata {
		// Attributes first, so that none can replace the metadata below.
		for k, v := range m.attributes {
			if headerAllowed(k, v) {
				req.Header[k] = []string{v}
			}
		}
		req.Header.Set("X-Goog-Pubsub-Message-Id", m.id)
		req.Header.Set("X-Goog-Pubsub-Subscription-Name", r.subName)
		req.Header.Set("X-Goog-Pubsub-Publish-Time", timestamp(m.publishTime))
		if m.orderingKey != "" {
			req.Header.Set("X-Goog-Pubsub-Ordering-Key", m.orderingKey)
		}
	}
	req.Header.Set("User-Agent", userAgent)
	if r.cfg.TokenSource != nil {
		tok, err := r.cfg.TokenSource(ctx)
		if err != nil {
			return nil, fmt.Errorf("pushrelay: token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return req, nil
}

// The push envelope; both spellings of the ID and publish time are sent, as
// Pub/Sub does.
type envelope struct {
	Message         pushMessage `json:"message"`
	Subscription    string      `json:"subscription"`
	DeliveryAttempt int         `json:"deliveryAttempt,omitempty"`
}

type pushMessage struct {
	Data         []byte            `json:"data,omitempty"` // standard base64
	Attributes   map[string]string `json:"attributes,omitempty"`
	MessageID    string            `json:"messageId"`
	MessageIDOld string            `json:"message_id"`
	PublishTime  string            `json:"publishTime"`
	PublishOld   string            `json:"publish_time"`
	OrderingKey  string            `json:"orderingKey,omitempty"`
}

// timestamp formats t like a protobuf Timestamp in JSON: RFC 3339 in UTC
// with 0, 3, 6 or 9 fractional digits.
func timestamp(t time.Time) string {
	t = t.UTC()
	ns := t.Nanosecond()
	switch {
	case ns == 0:
		return t.Format("2006-01-02T15:04:05Z")
	case ns%1e6 == 0:
		return t.Format("2006-01-02T15:04:05.000Z")
	case ns%1e3 == 0:
		return t.Format("2006-01-02T15:04:05.000000Z")
	}
	return t.Format("2006-01-02T15:04:05.000000000Z")
}

func headerAllowed(name, value string) bool {
	switch lower := strings.ToLower(name); {
	case lower == "authorization", lower == "host", strings.HasPrefix(lower, "x-goog-pubsub-"):
		return false
	}
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !isTokenChar(name[i]) {
			return false
		}
	}
	return !strings.ContainsAny(value, "\r\n\x00")
}

// isTokenChar reports whether c may appear in an HTTP field name (RFC 9110 token).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// deadLetter publishes m to the dead-letter topic with the attributes
// Pub/Sub adds. The publish outlives ctx so that a shutdown during it does
// not leave the message both forwarded and un-acked.
func (r *Relay) deadLetter(ctx context.Context, m *message, attempts int) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rpcTimeout)
	defer cancel()
	attrs := make(map[string]string, len(m.attributes)+4)
	for k, v := range m.attributes {
		attrs[k] = v
	}
	attrs["CloudPubSubDeadLetterSourceDeliveryCount"] = strconv.Itoa(attempts)
	attrs["CloudPubSubDeadLetterSourceSubscription"] = r.subID
	attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] = r.project
	attrs["CloudPubSubDeadLetterSourceTopicPublishTime"] = m.publishTime.UTC().Format("2006-01-02T15:04:05.000-07:00")
	_, err := r.cfg.Client.TopicAdminClient.Publish(ctx, &pubsubpb.PublishRequest{
		Topic: r.dlqName,
		Messages: []*pubsubpb.PubsubMessage{{
			Data:        m.data,
			Attributes:  attrs,
			OrderingKey: m.orderingKey,
		}},
	})
	if err != nil {
		return fmt.Errorf("pushrelay: dead-letter %s: %w", m.id, err)
	}
	return nil
}

// window is the push flow-control window: a semaphore whose size halves on
// each failure and grows by one on each success, between 1 and max.
// Waiters are served in arrival order.
type window struct {
	mu       sync.Mutex
	limit    int
	max      int
	inFlight int
	waiters  []chan struct{}
}

func newWindow(maxInFlight int) *window {
	return &window{limit: 1, max: maxInFlight}
}

func (w *window) acquire(ctx context.Context) error {
	w.mu.Lock()
	if len(w.waiters) == 0 && w.inFlight < w.limit {
		w.inFlight++
		w.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	w.waiters = append(w.waiters, ch)
	w.mu.Unlock()

	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		for i, c := range w.waiters {
			if c == ch {
				w.waiters = append(w.waiters[:i], w.waiters[i+1:]...)
				return ctx.Err()
			}
		}
		// Granted meanwhile: give the slot back without judging the endpoint.
		w.inFlight--
		w.grant()
		return ctx.Err()
	}
}

func (w *window) release(ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inFlight--
	if ok {
		w.limit = min(w.max, w.limit+1)
	} else {
		w.limit = max(1, w.limit/2)
	}
	w.grant()
}

// grant hands free slots to waiters; w.mu must be held.
func (w *window) grant() {
	for len(w.waiters) > 0 && w.inFlight < w.limit {
		close(w.waiters[0])
		w.waiters = w.waiters[1:]
		w.inFlight++
	}
}

func (w *window) state() (inFlight, limit int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inFlight, w.limit
}
