package simulator

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"apigee-timescale/deploy/local/standin/apigee"
	"apigee-timescale/deploy/local/standin/pubsubtest"
	"apigee-timescale/shared/record"
)

var t0 = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

// limits accept the fixed event times used here.
func limits() record.Limits {
	l := record.DefaultLimits()
	l.Now = func() time.Time { return t0.Add(24 * time.Hour) }
	return l
}

func newGenerator(t *testing.T, spikes ...Spike) *Generator {
	t.Helper()
	g, err := NewGenerator(GeneratorConfig{Seed: 42, RunID: "test", Spikes: spikes})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestGoodCallsParseToTheirTruth(t *testing.T) {
	g := newGenerator(t)
	for i := range 2000 {
		at := t0.Add(time.Duration(i) * 731 * time.Millisecond)
		m, err := g.Call(at)
		if err != nil {
			t.Fatal(err)
		}
		p := record.Parse(m.Data, limits())
		if len(p.Rejects) > 0 || len(p.Records) != 1 {
			t.Fatalf("record %d rejected: %+v\n%s", i, p.Rejects, m.Data)
		}
		r, c := p.Records[0], m.Call
		if r.MessageID != c.MessageID || !r.ReceivedAt.Equal(c.At) || r.Organization != c.Organization ||
			r.Environment != c.Environment || r.APIProxy != c.APIProxy || r.Tenant != c.Tenant ||
			int(r.ResponseStatusCode) != c.Status || r.IsError == nil || *r.IsError != c.IsError ||
			r.TotalResponseTime == nil || int(*r.TotalResponseTime) != c.TotalMS || r.DeveloperApp != c.App {
			t.Fatalf("record %d = %+v, truth %+v", i, r, c)
		}
		if (c.TargetMS > 0) != (r.TargetResponseTime != nil) {
			t.Fatalf("record %d: target time %v, truth %d", i, r.TargetResponseTime, c.TargetMS)
		}
		want := map[string]string{"schema": "apigee.call.v1", "organization": c.Organization, "environment": c.Environment, "apiproxy": c.APIProxy}
		for k, v := range want {
			if m.Attributes[k] != v {
				t.Fatalf("record %d: attribute %s = %q, want %q", i, k, m.Attributes[k], v)
			}
		}
	}
}

// TestRenderIsRenderRecord checks that the generator, which parses the
// bundle once, renders the same bytes as apigee.RenderRecord.
func TestRenderIsRenderRecord(t *testing.T) {
	g := newGenerator(t)
	bundle, err := FindBundle()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		vars, _ := g.m.call(t0.Add(time.Duration(i) * time.Second))
		if i%3 == 0 {
			delete(vars, "messageid")
		}
		got, err := g.render(vars)
		if err != nil {
			t.Fatal(err)
		}
		want, err := apigee.RenderRecord(bundle, vars)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Data) != string(want) {
			t.Fatalf("call %d:\n got %s\nwant %s", i, got.Data, want)
		}
	}
}

func TestMalformedKindsAreRejectedWithTheirReason(t *testing.T) {
	g := newGenerator(t)
	for _, k := range MalformedKinds {
		t.Run(k.String(), func(t *testing.T) {
			wantReason, wantField := k.Expect()
			if wantReason == "" {
				t.Fatalf("%v has no expected reason", k)
			}
			for i := range 50 {
				m, err := g.Malformed(t0.Add(time.Duration(i)*time.Second), k)
				if err != nil {
					t.Fatal(err)
				}
				if m.Malformed != k || m.Call != nil {
					t.Fatalf("message kind %v call %v", m.Malformed, m.Call)
				}
				p := record.Parse(m.Data, limits())
				if len(p.Records) != 0 || len(p.Rejects) != 1 {
					t.Fatalf("parsed %d records, %d rejects: %s", len(p.Records), len(p.Rejects), m.Data)
				}
				if r := p.Rejects[0]; r.Reason != wantReason || r.Field != wantField {
					t.Fatalf("reject %s/%s (%s), want %s/%s\n%s", r.Reason, r.Field, r.Detail, wantReason, wantField, m.Data)
				}
			}
		})
	}
}

func TestTrafficShape(t *testing.T) {
	orders := Proxy{"acme-prod", "prod", "orders-v1"}
	catalog := Proxy{"acme-prod", "prod", "catalog-v2"}
	spikes := []Spike{
		{Metric: MetricErrorRate, Proxy: orders, From: t0, To: t0.Add(time.Minute), Value: 0.3},
		{Metric: MetricLatency, Proxy: catalog, From: t0, To: t0.Add(time.Minute), Value: 5},
	}
	g := newGenerator(t, spikes...)
	type agg struct {
		calls, errors5xx int
		ms               []float64
	}
	// Before the spikes and during them; the flow variables are enough here.
	collect := func(from time.Time) map[Proxy]*agg {
		out := map[Proxy]*agg{}
		for i := range 30000 {
			_, c := g.m.call(from.Add(time.Duration(i) * time.Millisecond))
			m := Message{Call: &c}
			a := out[m.Call.Proxy]
			if a == nil {
				a = &agg{}
				out[m.Call.Proxy] = a
			}
			a.calls++
			if m.Call.Status >= 500 {
				a.errors5xx++
			}
			a.ms = append(a.ms, float64(m.Call.TotalMS))
		}
		return out
	}
	before, during := collect(t0.Add(-time.Hour)), collect(t0)

	if before[orders].calls <= before[catalog].calls || before[catalog].calls <= before[Proxy{"acme-prod", "prod", "notifications-v1"}].calls {
		t.Errorf("proxy counts not Zipf-ordered: orders %d, catalog %d", before[orders].calls, before[catalog].calls)
	}
	if share := float64(before[orders].calls) / 30000; share < 0.12 || share > 0.3 {
		t.Errorf("busiest proxy has %.2f of the traffic", share)
	}
	rate := func(a *agg) float64 { return float64(a.errors5xx) / float64(a.calls) }
	if r := rate(before[orders]); r > 0.02 {
		t.Errorf("orders 5xx rate before the spike = %.3f", r)
	}
	if r := rate(during[orders]); math.Abs(r-0.3) > 0.04 {
		t.Errorf("orders 5xx rate during the spike = %.3f, want about 0.3", r)
	}
	p95 := func(a *agg) float64 { return quantile(a.ms, 0.95) }
	if ratio := p95(during[catalog]) / p95(before[catalog]); ratio < 4 || ratio > 6 {
		t.Errorf("catalog p95 grew %.2f×, want about 5×", ratio)
	}
	if ratio := p95(during[orders]) / p95(before[orders]); ratio > 1.3 {
		t.Errorf("orders p95 grew %.2f× without a latency spike", ratio)
	}
}

func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

func TestDiurnalShape(t *testing.T) {
	var sum, lo, hi float64 = 0, math.Inf(1), math.Inf(-1)
	const n = 24 * 60
	for i := range n {
		v := diurnal(24 * float64(i) / n)
		sum += v
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	if mean := sum / n; math.Abs(mean-1) > 1e-9 {
		t.Errorf("mean = %v, want 1", mean)
	}
	if lo < 0.3 || lo > 0.7 || hi < 1.4 || hi > 2.2 {
		t.Errorf("range %.2f–%.2f, want night about half and peak about twice the mean", lo, hi)
	}
	if diurnal(4) >= diurnal(15.5) {
		t.Errorf("night %.2f not below afternoon %.2f", diurnal(4), diurnal(15.5))
	}
}

func TestDefaultSpikesAreOnWholeMinutesWithABaseline(t *testing.T) {
	start := t0.Add(17 * time.Second)
	for _, s := range DefaultSpikes(start, 90*time.Minute) {
		if s.From.Truncate(time.Minute) != s.From || s.To.Sub(s.From) != 2*time.Minute {
			t.Errorf("%v: not two whole minutes", s)
		}
		if s.From.Sub(start) < 30*time.Minute || s.To.After(start.Add(90*time.Minute)) {
			t.Errorf("%v: outside the span or without 30 minutes of baseline", s)
		}
	}
}

// TestRunPublishesThroughPubSub runs a short simulation against pstest with
// the real client and reads back every message.
func TestRunPublishesThroughPubSub(t *testing.T) {
	ps := pubsubtest.New(t, "proj")
	srv, client := ps.Server, ps.Client
	ctx := context.Background()
	topic := "projects/proj/topics/calls"
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var progress []Stats
	sim, err := New(Config{
		Rate: 3000, Duration: 1500 * time.Millisecond, Span: 30 * time.Minute, End: t0, Seed: 9, RunID: "pstest",
		MalformedShare: 0.05, DuplicateShare: 0.1, ProgressEvery: 200 * time.Millisecond,
		Progress: func(s Stats) { mu.Lock(); progress = append(progress, s); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	pub := client.Publisher(topic)
	st, err := sim.Run(ctx, pub)
	pub.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent < 3000 || st.Published != st.Sent || st.Failed != 0 {
		t.Fatalf("stats %+v: want about 4500 sent, all published", st)
	}
	if st.Sent != st.Calls+st.Malformed+st.Duplicates {
		t.Errorf("sent %d != calls %d + malformed %d + duplicates %d", st.Sent, st.Calls, st.Malformed, st.Duplicates)
	}
	if share := float64(st.Malformed) / float64(st.Sent); share < 0.03 || share > 0.07 {
		t.Errorf("malformed share %.3f, want about 0.05", share)
	}
	if share := float64(st.Duplicates) / float64(st.Calls); share < 0.07 || share > 0.13 {
		t.Errorf("duplicate share %.3f, want about 0.1", share)
	}
	var perProxy int64
	for _, pt := range st.PerProxy {
		perProxy += pt.Calls
	}
	if perProxy != st.Calls {
		t.Errorf("per-proxy calls sum to %d, want %d", perProxy, st.Calls)
	}
	if len(progress) < 3 {
		t.Errorf("%d progress reports, want one about every 200ms", len(progress))
	}
	start, end := sim.Window()
	if !end.Equal(t0) || !start.Equal(t0.Add(-30*time.Minute)) || !st.EventTime.Equal(t0) {
		t.Errorf("window %v–%v, event time reached %v", start, end, st.EventTime)
	}

	// What reached the topic: one message per publish, each record ID once
	// per publish (retries share it), event times inside the window.
	msgs := srv.Messages()
	if int64(len(msgs)) != st.Sent {
		t.Fatalf("pstest holds %d messages, sent %d", len(msgs), st.Sent)
	}
	perID := map[string]int{}
	var bad int64
	for _, m := range msgs {
		var rec struct {
			MessageID  string `json:"message_id"`
			ReceivedAt string `json:"received_at"`
		}
		if json.Unmarshal(m.Data, &rec) != nil || rec.MessageID == "" {
			bad++
			continue
		}
		perID[rec.MessageID]++
	}
	var twice int64
	for _, n := range perID {
		if n > 2 {
			t.Fatalf("a record was published %d times", n)
		}
		if n == 2 {
			twice++
		}
	}
	if twice != st.Duplicates {
		t.Errorf("%d records published twice, want %d duplicates", twice, st.Duplicates)
	}
	// Truncated, wrong-topic-less-ID and no-ID messages have no usable ID.
	if bad == 0 || bad > st.Malformed {
		t.Errorf("%d messages without a record ID, malformed %d", bad, st.Malformed)
	}
}
