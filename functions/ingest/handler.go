package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/privacy"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/record"
)

// Verifier checks a push request's OIDC token; *pushauth.Verifier is one.
type Verifier interface {
	Verify(ctx context.Context, r *http.Request) (pushauth.Claims, error)
}

// Deps are the service's collaborators, made by the caller so tests and the
// local stack can supply their own.
type Deps struct {
	// DB hands out connections that log in as a member of apigee_ingest.
	DB Conns
	// Writer, when set, writes the batches instead of a Writer over
	// DB (the benchmark's database-less ceiling uses one that stores
	// nothing).
	Writer BatchWriter
	// Verifier, when nil, turns push authentication off.
	Verifier Verifier
	// Privacy applies Config.Privacy. When nil, NewService builds it from
	// Config.Privacy, which it can only do with INGEST_PRIVACY_KEY (a
	// secret is read by privacy.Load, as NewFromEnv does).
	Privacy *privacy.Pseudonymiser
	Logger  *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Service is the ingest core shared by the HTTP push function (Ingest) and
// the Eventarc CloudEvent function (IngestEvent).
type Service struct {
	cfg      Config
	limits   record.Limits
	log      *slog.Logger
	verifier Verifier
	privacy  *privacy.Pseudonymiser
	batcher  *batcher
	batchLog *batchLog
	now      func() time.Time
	// active counts requests between arrival and answer, so Shutdown can
	// wait for their answers to be written.
	active inFlight
}

// NewService starts the batcher; Close stops it.
func NewService(cfg Config, d Deps) (*Service, error) {
	if d.DB == nil && d.Writer == nil {
		return nil, errors.New("ingest: no database")
	}
	if d.Writer == nil {
		d.Writer = NewWriter(d.DB)
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Privacy == nil {
		if cfg.Privacy.KeySecret != "" {
			return nil, fmt.Errorf("ingest: %s is set: read it with privacy.Load and pass Deps.Privacy", privacy.EnvKeySecret)
		}
		pz, err := privacy.Load(context.Background(), cfg.Privacy) // a literal key: no I/O
		if err != nil {
			return nil, fmt.Errorf("ingest: %w", err)
		}
		d.Privacy = pz
	}
	s := &Service{cfg: cfg, limits: cfg.Limits(), log: d.Logger, verifier: d.Verifier, privacy: d.Privacy, now: d.Now}
	s.limits.Now = d.Now
	bc := cfg.Batch.withDefaults()
	s.batchLog = newBatchLog(s.log, bc.LogInterval)
	bc.OnBatch = s.batchLog.batch
	s.batcher = newBatcher(d.Writer, bc)
	if d.Verifier == nil {
		s.log.Warn("push authentication is OFF: PUSH_AUDIENCE is not set, so any caller may write records")
	}
	if d.Privacy.Active() {
		s.log.Info("personal fields are pseudonymised before they are stored", "policy", d.Privacy.Policy().String())
	} else {
		s.log.Warn("personal fields are stored as they came: INGEST_PRIVACY pseudonymises none")
	}
	return s, nil
}

// Close stops accepting deliveries and commits what is queued, within ctx,
// then logs the summary of the last interval.
func (s *Service) Close(ctx context.Context) error {
	err := s.batcher.Close(ctx)
	s.batchLog.close()
	return err
}

// Shutdown refuses new requests (503: Pub/Sub redelivers them to another
// instance), commits what is queued (Close), then waits within ctx until
// every request admitted before it has been answered, so the
// acknowledgements of committed batches reach Pub/Sub before the process
// exits.
func (s *Service) Shutdown(ctx context.Context) error {
	s.active.refuse()
	if err := s.Close(ctx); err != nil {
		return err
	}
	if err := s.active.wait(ctx); err != nil {
		return fmt.Errorf("ingest: shutdown: %w", err)
	}
	return nil
}

// inFlight counts the requests between arrival and answer, and refuses
// new ones once Shutdown has begun. Not a sync.WaitGroup: Pub/Sub keeps
// pushing while Shutdown waits, and an Add from zero while a Wait returns
// panics ("WaitGroup is reused before previous Wait has returned": the
// sync.WaitGroup documentation requires such Adds to happen before the
// Wait). Nor does the wait count arrivals after refuse, so a steady stream
// of pushes cannot hold it open.
type inFlight struct {
	state atomic.Int64 // the requests in flight, plus refusing once set
}

const refusing = 1 << 62

// enter counts a request in, or reports false once refuse was called.
func (f *inFlight) enter() bool {
	if f.state.Add(1)&refusing != 0 {
		f.state.Add(-1)
		return false
	}
	return true
}

func (f *inFlight) leave() { f.state.Add(-1) }

func (f *inFlight) refuse() { f.state.Or(refusing) }

// wait returns once no admitted request is in flight, or ctx's error. It
// polls, as net/http's Server.Shutdown does for idle connections: Shutdown
// is rare, and polling keeps a request's cost at one atomic add each way.
// A refused request is counted for an instant; the next poll misses it.
func (f *inFlight) wait(ctx context.Context) error {
	const maxPoll = 50 * time.Millisecond
	poll := time.Millisecond
	t := time.NewTimer(poll)
	defer t.Stop()
	for f.state.Load()&^refusing > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			poll = min(2*poll, maxPoll)
			t.Reset(poll)
		}
	}
	return nil
}

// ServeHTTP is the push endpoint. 204: every record of the delivery is
// stored or quarantined. 401: authentication failed, nothing written.
// 429/503: not stored now; Pub/Sub will redeliver.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.active.enter() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "shutting down; retry later", http.StatusServiceUnavailable)
		return
	}
	defer s.active.leave()
	// Runs before active.leave: the answer must be on the wire before
	// Shutdown lets the process exit, or a committed delivery would look
	// unacknowledged to Pub/Sub (harmless, but a needless redelivery).
	defer http.NewResponseController(w).Flush() //nolint:errcheck // best effort
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "ingest accepts POST from a Pub/Sub push subscription", http.StatusMethodNotAllowed)
		return
	}
	if s.verifier != nil {
		if _, err := s.verifier.Verify(r.Context(), r); err != nil {
			// The reason goes to the log, not to an unauthenticated caller.
			s.log.Warn("push authentication failed", logging.Err(err), "remote", r.RemoteAddr)
			code := function.StatusFor(err)
			http.Error(w, http.StatusText(code), code)
			return
		}
	}
	var m message
	body, err := readBody(r, s.cfg.MaxBodyBytes)
	switch {
	case err != nil:
		// The caller went away mid-body; it will redeliver.
		http.Error(w, "could not read the request body", http.StatusServiceUnavailable)
		return
	case len(body) > s.cfg.MaxBodyBytes:
		m = decodeUnwrapped(r.Header, nil)
		m.refuse(ReasonDeliveryTooLarge, fmt.Sprintf("delivery is larger than %d bytes; first 64 KiB kept", s.cfg.MaxBodyBytes),
			body[:min(len(body), 64<<10)])
	default:
		m = decodePush(r.Header, body)
	}
	// RequestTimeout is the batcher's timer, not a context.WithTimeout: a
	// child context per delivery costs allocations and a registration
	// with the request's context.
	code, msg := s.answer(s.submit(r.Context(), m, len(body), s.cfg.RequestTimeout))
	if code == http.StatusNoContent {
		w.WriteHeader(code)
		return
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, msg, code)
}

// readBody reads at most limit+1 bytes of r's body, into one buffer of the
// declared length when there is one (io.ReadAll would grow it from 512
// bytes, copying as it goes).
func readBody(r *http.Request, limit int) ([]byte, error) {
	if r.ContentLength <= 0 || r.ContentLength > int64(limit) {
		return io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	}
	buf := make([]byte, r.ContentLength, r.ContentLength+1)
	if _, err := io.ReadFull(r.Body, buf); err != nil {
		return nil, err
	}
	// A body longer than declared is an error in net/http; read on to be
	// sure nothing is left. The spare byte of buf sees the common case
	// (nothing) without a LimitReader or a buffer.
	n, err := r.Body.Read(buf[len(buf):cap(buf)])
	buf = buf[:len(buf)+n]
	switch {
	case err == io.EOF:
		return buf, nil
	case err != nil:
		return nil, err
	}
	rest, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1-int64(len(buf))))
	return append(buf, rest...), err
}

// HandleEvent is the Eventarc entry point: the CloudEvent's data is the
// wrapped push envelope. A returned error makes Eventarc retry (when the
// trigger has --retry); poison input is quarantined and returns nil.
func (s *Service) HandleEvent(ctx context.Context, e event.Event) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	m, ok := decodeWrapped(e.Data())
	if !ok {
		m.refuse(ReasonBadEnvelope, "CloudEvent data has no message", e.Data())
	}
	if m.ID == "" {
		m.ID = record.Storable(e.ID())
	}
	if err := s.submit(ctx, m, len(e.Data()), 0); err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	return nil
}

// answer turns submit's outcome into the push answer: 204 stored (or
// quarantined), anything else makes Pub/Sub redeliver.
func (s *Service) answer(err error) (int, string) {
	if err == nil {
		return http.StatusNoContent, ""
	}
	code := function.StatusFor(err)
	if code == http.StatusTooManyRequests {
		return code, "ingest queue is full; retry later"
	}
	s.log.Warn("delivery not stored; Pub/Sub will redeliver", logging.Err(err))
	return code, "not stored; retry later"
}

// submit validates a message and waits until its records are committed.
// Every failure is classified for function.StatusFor: the queue bound is
// overload (429); anything else (deadline, database down, shutting down)
// means not stored now (503), and the redelivery is idempotent. A
// non-zero wait bounds the wait as a deadline on ctx would.
func (s *Service) submit(ctx context.Context, m message, size int, wait time.Duration) error {
	err := s.batcher.SubmitWithin(ctx, s.toDelivery(m, size), wait)
	if err == nil || errors.Is(err, function.ErrOverloaded) || errors.Is(err, function.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", function.ErrUnavailable, err)
}

// toDelivery splits a message into stored calls and quarantined rejects.
// Personal fields are pseudonymised here, before anything is hashed,
// stored or logged: the rows, their rows_sha256 and the quarantine all hold
// what INGEST_PRIVACY leaves of them.
func (s *Service) toDelivery(m message, size int) *delivery {
	d := &delivery{Bytes: size, src: sourceOf(&m, s.now())}
	if m.bad != nil {
		d.Rejects = []Reject{d.src.private(s.privacy, d.src.reject(*m.bad, ""), true)}
		return d
	}
	p := record.Parse(m.Data, s.limits)
	for i := range p.Rejects {
		d.Rejects = append(d.Rejects, d.src.private(s.privacy, d.src.reject(p.Rejects[i], ""), false))
	}
	s.privacy.Records(p.Records)
	d.Calls = d.one[:0]
	if len(p.Records) > len(d.one) {
		d.Calls = make([]Call, 0, len(p.Records))
	}
	d.Calls = d.Calls[:len(p.Records)]
	// Every position in the message holds a record or a reject, in order:
	// a record's index is the next one no reject holds.
	index, r := 0, 0
	for i := range p.Records {
		for ; r < len(p.Rejects) && p.Rejects[r].Index == index; r++ {
			index++
		}
		d.Calls[i] = Call{Record: &p.Records[i], PubSubMessageID: m.ID, PublishTime: m.PublishTime, index: index}
		index++
	}
	return d
}
