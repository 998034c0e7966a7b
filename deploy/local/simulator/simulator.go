// Package simulator is an Apigee traffic simulator for the local stack. It
// publishes apigee.call.v1 records through the real Pub/Sub client, each
// rendered by deploy/apigee exactly as the shared flow renders it, from the
// flow variables of simulated API calls:
//
//   - three organizations of different sizes, with environments, tenants
//     (a custom attribute of each developer app), Zipf-distributed proxies
//     and apps, API-key and JWT callers;
//   - lognormal latencies around each proxy's median, status codes with
//     their Apigee fault names;
//   - a diurnal traffic shape: a whole day (quiet night, morning rise,
//     lunchtime dip, afternoon peak) compressed into the run;
//   - event time (received_at) compressed too: the run covers Span of event
//     time ending at End, so a run of under a minute fills enough minute
//     buckets for the rollup's anomaly detection;
//   - injected spikes: an error-rate spike and a latency spike on known
//     proxies at known minutes;
//   - a share of malformed messages of known kinds, and a share of publisher
//     retries: the same record published again, which Pub/Sub gives a new
//     message ID, so ingest must dedupe on the record's own key.
package simulator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

// Spike metrics; the names are the rollup's anomaly metrics.
const (
	MetricErrorRate = "error_rate"
	MetricLatency   = "p95_latency_ms"
)

// Spike changes one proxy's calls whose event time is in [From, To).
type Spike struct {
	Metric string    `json:"metric"`
	Proxy  Proxy     `json:"proxy"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	// Value is the share of 5xx answers (0–1) for MetricErrorRate, the
	// latency multiplier for MetricLatency.
	Value float64 `json:"value"`
}

func (s Spike) String() string {
	what := fmt.Sprintf("error rate %.0f%%", 100*s.Value)
	if s.Metric == MetricLatency {
		what = fmt.Sprintf("latency ×%.1f", s.Value)
	}
	return fmt.Sprintf("%s on %s, event time %s–%s", what, s.Proxy, s.From.UTC().Format("15:04"), s.To.UTC().Format("15:04"))
}

// DefaultSpikes returns the two injected incidents for a run covering
// [start, start+span): the organization's busiest proxy fails 30% of calls
// for two minutes at 60% of the span, and its second busiest is five
// times slower for two minutes at 80%. Both sit late enough to have a
// baseline (the rollup needs 20 judged minutes by default), on whole minutes.
func DefaultSpikes(start time.Time, span time.Duration) []Spike {
	at := func(frac float64) time.Time {
		return start.Add(time.Duration(frac * float64(span))).Truncate(time.Minute)
	}
	e, l := at(0.6), at(0.8)
	return []Spike{
		{Metric: MetricErrorRate, Proxy: Proxy{"acme-prod", "prod", "orders-v1"}, From: e, To: e.Add(2 * time.Minute), Value: 0.3},
		{Metric: MetricLatency, Proxy: Proxy{"acme-prod", "prod", "catalog-v2"}, From: l, To: l.Add(2 * time.Minute), Value: 5},
	}
}

// Publisher is the part of *pubsub.Publisher the simulator uses.
type Publisher interface {
	Publish(ctx context.Context, msg *pubsub.Message) *pubsub.PublishResult
}

// Config configures a Simulator. Zero fields take the defaults.
type Config struct {
	// Rate is the mean number of messages per second over the run; the
	// diurnal shape makes it vary between about half and twice that.
	// Default 600.
	Rate float64
	// Duration is how long the run publishes. Default 40s.
	Duration time.Duration
	// Span is the event time the run covers. Default 90m.
	Span time.Duration
	// End is the event time of the end of the span. Default: when Run
	// starts, truncated to the minute.
	End time.Time
	// Seed makes the traffic reproducible; default: random.
	Seed uint64
	// RunID goes into every message_id; default: random.
	RunID string
	// MalformedShare is the share of malformed messages; default 0.002.
	// Negative: none.
	MalformedShare float64
	// DuplicateShare is the share of good records published a second time
	// shortly after, as a publisher retry would; default 0.02. Negative: none.
	DuplicateShare float64
	// Spikes are the injected incidents; nil means DefaultSpikes over the
	// span. An empty non-nil slice injects none.
	Spikes []Spike
	// BundleDir is the shared flow bundle; see GeneratorConfig.
	BundleDir string
	// Progress, when set, is called every ProgressEvery (default 1s) and
	// once at the end with the counters so far.
	Progress      func(Stats)
	ProgressEvery time.Duration
}

// ProxyTruth counts the good records published for one proxy.
type ProxyTruth struct {
	Calls  int64 `json:"calls"`
	Errors int64 `json:"errors"` // is_error: status ≥ 400
}

// Stats are a run's counters. Published + Failed = Sent once Run returned.
type Stats struct {
	Sent       int64 `json:"sent"`      // Publish calls, duplicates included
	Published  int64 `json:"published"` // acknowledged by Pub/Sub
	Failed     int64 `json:"failed"`    // publishes that returned an error
	Calls      int64 `json:"calls"`     // distinct good records sent
	Malformed  int64 `json:"malformed"`
	Duplicates int64 `json:"duplicates"` // publisher retries sent
	// MalformedByReason counts malformed messages sent by the reject
	// reason ingest must give them.
	MalformedByReason map[string]int64      `json:"malformed_by_reason"`
	PerProxy          map[Proxy]*ProxyTruth `json:"-"`
	// EventTime is the event time reached.
	EventTime time.Time     `json:"event_time"`
	Elapsed   time.Duration `json:"elapsed"`
}

// Simulator publishes one run of traffic.
type Simulator struct {
	cfg    Config
	start  time.Time // event time of the start of the span
	end    time.Time
	spikes []Spike
	gen    *Generator
	r      *mrand.Rand

	mu    sync.Mutex
	stats Stats
}

// New applies defaults and loads the bundle.
func New(cfg Config) (*Simulator, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 600
	}
	if cfg.Duration == 0 {
		cfg.Duration = 40 * time.Second
	}
	if cfg.Span == 0 {
		cfg.Span = 90 * time.Minute
	}
	if cfg.End.IsZero() {
		cfg.End = time.Now().UTC().Truncate(time.Minute)
	}
	if cfg.Seed == 0 {
		cfg.Seed = mrand.Uint64()
	}
	if cfg.RunID == "" {
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("simulator: run id: %w", err)
		}
		cfg.RunID = hex.EncodeToString(b)
	}
	if cfg.MalformedShare == 0 {
		cfg.MalformedShare = 0.002
	}
	if cfg.DuplicateShare == 0 {
		cfg.DuplicateShare = 0.02
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = time.Second
	}
	switch {
	case cfg.Rate < 0 || cfg.Duration < 0 || cfg.Span < 0:
		return nil, errors.New("simulator: rate, duration and span must be positive")
	case cfg.MalformedShare > 1 || cfg.DuplicateShare > 1:
		return nil, errors.New("simulator: shares must be at most 1")
	}
	s := &Simulator{
		cfg:   cfg,
		end:   cfg.End.UTC(),
		start: cfg.End.UTC().Add(-cfg.Span),
		r:     mrand.New(mrand.NewPCG(cfg.Seed, 7)),
	}
	s.spikes = cfg.Spikes
	if s.spikes == nil {
		s.spikes = DefaultSpikes(s.start, cfg.Span)
	}
	gen, err := NewGenerator(GeneratorConfig{Seed: cfg.Seed, RunID: cfg.RunID, Spikes: s.spikes, BundleDir: cfg.BundleDir})
	if err != nil {
		return nil, err
	}
	s.gen = gen
	s.stats = Stats{MalformedByReason: map[string]int64{}, PerProxy: map[Proxy]*ProxyTruth{}}
	return s, nil
}

// Spikes returns the injected incidents, with absolute event times.
func (s *Simulator) Spikes() []Spike { return append([]Spike(nil), s.spikes...) }

// Window returns the event-time span of the run.
func (s *Simulator) Window() (start, end time.Time) { return s.start, s.end }

// RunID returns the run's ID, part of every message_id.
func (s *Simulator) RunID() string { return s.cfg.RunID }

// Proxies lists every proxy of the simulated estate.
func (s *Simulator) Proxies() []Proxy { return s.gen.Proxies() }

// Stats returns a snapshot of the counters.
func (s *Simulator) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.MalformedByReason = make(map[string]int64, len(s.stats.MalformedByReason))
	for k, v := range s.stats.MalformedByReason {
		st.MalformedByReason[k] = v
	}
	st.PerProxy = make(map[Proxy]*ProxyTruth, len(s.stats.PerProxy))
	for k, v := range s.stats.PerProxy {
		c := *v
		st.PerProxy[k] = &c
	}
	return st
}

// retry is a good message to publish again at a wall-clock time.
type retry struct {
	at  time.Time
	msg Message
}

// tick is the pacing interval.
const tick = 20 * time.Millisecond

// Run publishes the run's traffic through pub, then waits for every
// publish result. It returns early, with the counters so far, when ctx
// is done or rendering fails.
func (s *Simulator) Run(ctx context.Context, pub Publisher) (Stats, error) {
	results := make(chan *pubsub.PublishResult, 4096)
	var collectors sync.WaitGroup
	for range 4 {
		collectors.Add(1)
		go func() {
			defer collectors.Done()
			for res := range results {
				_, err := res.Get(context.WithoutCancel(ctx))
				s.mu.Lock()
				if err != nil {
					s.stats.Failed++
				} else {
					s.stats.Published++
				}
				s.mu.Unlock()
			}
		}()
	}
	err := s.publishAll(ctx, pub, results)
	close(results)
	collectors.Wait()
	st := s.Stats()
	if s.cfg.Progress != nil {
		s.cfg.Progress(st)
	}
	return st, err
}

func (s *Simulator) publishAll(ctx context.Context, pub Publisher, results chan<- *pubsub.PublishResult) error {
	begin := time.Now()
	send := func(m Message, dup bool) {
		res := pub.Publish(ctx, &pubsub.Message{Data: m.Data, Attributes: m.Attributes})
		s.mu.Lock()
		s.stats.Sent++
		switch {
		case dup:
			s.stats.Duplicates++
		case m.Malformed != 0:
			s.stats.Malformed++
			reason, _ := m.Malformed.Expect()
			s.stats.MalformedByReason[reason]++
		default:
			s.stats.Calls++
			pt := s.stats.PerProxy[m.Call.Proxy]
			if pt == nil {
				pt = &ProxyTruth{}
				s.stats.PerProxy[m.Call.Proxy] = pt
			}
			pt.Calls++
			if m.Call.IsError {
				pt.Errors++
			}
		}
		s.mu.Unlock()
		results <- res
	}

	var retries []retry
	var carry float64
	lastProgress := begin
	t := time.NewTicker(tick)
	defer t.Stop()
	prev := begin
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		now := time.Now()
		elapsed := now.Sub(begin)
		p := min(1, float64(elapsed)/float64(s.cfg.Duration))
		pPrev := float64(prev.Sub(begin)) / float64(s.cfg.Duration)
		dt := now.Sub(prev).Seconds()
		prev = now

		// The diurnal shape: the whole day is compressed into the run.
		carry += s.cfg.Rate * diurnal(24*p) * dt
		n := int(carry)
		carry -= float64(n)
		for range n {
			// Event time advances with the run, spread over this tick.
			frac := pPrev + (p-pPrev)*s.r.Float64()
			at := s.start.Add(time.Duration(frac * float64(s.cfg.Span)))
			var m Message
			var err error
			if s.r.Float64() < s.cfg.MalformedShare {
				m, err = s.gen.Malformed(at, MalformedKinds[s.r.IntN(len(MalformedKinds))])
			} else {
				m, err = s.gen.Call(at)
			}
			if err != nil {
				return err
			}
			send(m, false)
			if m.Malformed == 0 && s.r.Float64() < s.cfg.DuplicateShare {
				// A publisher retry after a lost acknowledgement.
				retries = append(retries, retry{at: now.Add(time.Duration(50+s.r.IntN(950)) * time.Millisecond), msg: m})
			}
		}
		kept := retries[:0]
		for _, rt := range retries {
			if !rt.at.After(now) || p >= 1 {
				send(rt.msg, true)
				continue
			}
			kept = append(kept, rt)
		}
		retries = kept

		s.mu.Lock()
		s.stats.EventTime = s.start.Add(time.Duration(p * float64(s.cfg.Span)))
		s.stats.Elapsed = elapsed
		s.mu.Unlock()
		if s.cfg.Progress != nil && now.Sub(lastProgress) >= s.cfg.ProgressEvery {
			lastProgress = now
			s.cfg.Progress(s.Stats())
		}
		if p >= 1 {
			return nil
		}
	}
}
