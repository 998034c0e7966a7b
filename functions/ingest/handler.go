package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

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
	Logger   *slog.Logger
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
	batcher  *Batcher
	now      func() time.Time
	// active counts requests between arrival and answer, so Shutdown can
	// wait for their answers to be written.
	active sync.WaitGroup
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
	s := &Service{cfg: cfg, limits: cfg.Limits(), log: d.Logger, verifier: d.Verifier, now: d.Now}
	s.limits.Now = d.Now
	bc := cfg.Batch
	bc.OnBatch = s.logBatch
	s.batcher = newBatcher(d.Writer, bc)
	if d.Verifier == nil {
		s.log.Warn("push authentication is OFF: PUSH_AUDIENCE is not set, so any caller may write records")
	}
	return s, nil
}

// Close stops accepting deliveries and commits what is queued, within ctx.
func (s *Service) Close(ctx context.Context) error {
	return s.batcher.Close(ctx)
}

// Shutdown is Close, then waits (within ctx) until every request in flight
// has been answered, so the acknowledgements of committed batches reach
// Pub/Sub before the process exits.
func (s *Service) Shutdown(ctx context.Context) error {
	if err := s.Close(ctx); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { s.active.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ingest: shutdown: %w", ctx.Err())
	}
}

// ServeHTTP is the push endpoint. 204: every record of the delivery is
// stored or quarantined. 401: authentication failed, nothing written.
// 429/503: not stored now; Pub/Sub will redeliver.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.active.Add(1)
	defer s.active.Done()
	// Runs before active.Done: the answer must be on the wire before
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
			s.log.Warn("push authentication failed", "err", err.Error(), "remote", r.RemoteAddr)
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()

	var m message
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(s.cfg.MaxBodyBytes)+1))
	switch {
	case err != nil:
		// The caller went away mid-body; it will redeliver.
		http.Error(w, "could not read the request body", http.StatusServiceUnavailable)
		return
	case len(body) > s.cfg.MaxBodyBytes:
		m = decodeUnwrapped(r.Header, nil)
		m.bad = &badDelivery{ReasonDeliveryTooLarge,
			fmt.Sprintf("delivery is larger than %d bytes; first 64 KiB kept", s.cfg.MaxBodyBytes), body[:min(len(body), 64<<10)]}
	default:
		m = decodePush(r.Header, body)
	}
	code, msg := s.answer(s.submit(ctx, m, len(body)))
	if code == http.StatusNoContent {
		w.WriteHeader(code)
		return
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, msg, code)
}

// HandleEvent is the Eventarc entry point: the CloudEvent's data is the
// wrapped push envelope. A returned error makes Eventarc retry (when the
// trigger has --retry); poison input is quarantined and returns nil.
func (s *Service) HandleEvent(ctx context.Context, e event.Event) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	m, ok := decodeWrapped(e.Data())
	if !ok {
		m = message{bad: &badDelivery{ReasonBadEnvelope, "CloudEvent data has no message", e.Data()}}
	}
	if m.ID == "" {
		m.ID = e.ID()
	}
	if err := s.submit(ctx, m, len(e.Data())); err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	return nil
}

func (s *Service) answer(err error) (int, string) {
	switch {
	case err == nil:
		return http.StatusNoContent, ""
	case errors.Is(err, ErrQueueFull):
		return http.StatusTooManyRequests, "ingest queue is full; retry later"
	default:
		s.log.Warn("delivery not stored; Pub/Sub will redeliver", "err", err.Error())
		return http.StatusServiceUnavailable, "not stored; retry later"
	}
}

// submit validates a message and waits until its records are committed.
func (s *Service) submit(ctx context.Context, m message, size int) error {
	return s.batcher.Submit(ctx, s.toItem(m, size))
}

// toItem splits a message into stored calls and quarantined rejects.
func (s *Service) toItem(m message, size int) *Item {
	it := &Item{Bytes: size}
	now := s.now().UTC()
	rejectAt := m.PublishTime
	if rejectAt.IsZero() {
		rejectAt = now
	}
	reject := func(index int, reason, field, detail string, raw []byte) {
		it.Rejects = append(it.Rejects, Reject{
			ReceivedAt:      rejectAt,
			DedupeKey:       dedupeKey(m, index, raw),
			Tenant:          rejectTenant(m.Attributes),
			Reason:          reason,
			Field:           field,
			Detail:          detail,
			RecordIndex:     index,
			Payload:         raw,
			PubSubMessageID: m.ID,
			Subscription:    m.Subscription,
			PublishTime:     m.PublishTime,
			Attributes:      m.Attributes,
		})
	}
	if m.bad != nil {
		reject(-1, m.bad.Reason, "", m.bad.Detail, m.bad.Raw)
		return it
	}
	p := record.Parse(m.Data, s.limits)
	for i := range p.Rejects {
		r := &p.Rejects[i]
		reject(r.Index, r.Reason, r.Field, r.Detail, r.Raw)
	}
	it.Calls = make([]Call, len(p.Records))
	for i := range p.Records {
		it.Calls[i] = Call{Record: p.Records[i], PubSubMessageID: m.ID, PublishTime: m.PublishTime}
	}
	return it
}

// dedupeKey identifies a reject across redeliveries: Pub/Sub keeps the
// message id, so the id and the record's index within the message do; a
// delivery without an id falls back to a hash of the rejected bytes.
func dedupeKey(m message, index int, raw []byte) string {
	idx := strconv.Itoa(index)
	if m.ID != "" {
		return "msg:" + m.ID + ":" + idx
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]) + ":" + idx
}

// rejectTenant picks the tenant a reject is visible to: the message's
// tenant or organization attribute (the Apigee shared flow sets them).
func rejectTenant(attrs map[string]string) string {
	if t := attrs["tenant"]; t != "" {
		return t
	}
	if o := attrs["organization"]; o != "" {
		return o
	}
	return "unknown"
}

func (s *Service) logBatch(st BatchStats) {
	attrs := []any{
		"batch_id", st.BatchID,
		"deliveries", st.Deliveries,
		"rows", st.Rows,
		"inserted", st.Inserted,
		"duplicates", st.Duplicates,
		"rejected", st.Rejected,
		"bytes", st.Bytes,
		"wait_ms", st.Wait.Milliseconds(),
		"write_ms", st.Write.Milliseconds(),
	}
	switch {
	case st.Split:
		s.log.Warn("batch refused by the database; deliveries written one by one", append(attrs, "err", st.Err.Error())...)
	case st.Err != nil:
		s.log.Error("batch failed", append(attrs, "err", st.Err.Error())...)
	default:
		s.log.Info("batch committed", attrs...)
	}
}
