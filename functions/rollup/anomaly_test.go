package rollup

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"apigee-timescale/deploy/local/standin/pubsubtest"
	"apigee-timescale/deploy/local/testkit"
)

// histOf bins values as apigee.latency_hist_of does.
func histOf(vals []float64) Hist {
	counts := map[int32]int64{}
	for _, v := range vals {
		counts[LatencyBin(v)]++
	}
	var h Hist
	for b := range counts {
		h.Bins = append(h.Bins, b)
	}
	slices.Sort(h.Bins)
	for _, b := range h.Bins {
		h.Counts = append(h.Counts, counts[b])
	}
	return h
}

// minuteOf is one proxy-minute of n calls with lognormal latencies around
// medianMS (σ 0.4), scaled by slow.
func minuteOf(rng *rand.Rand, at time.Time, n, errors int64, medianMS, slow float64) Point {
	vals := make([]float64, n)
	for i := range vals {
		vals[i] = slow * float64(lognormal(rng, medianMS, 0.4))
	}
	return Point{Minute: at, Calls: n, Errors: errors, Latency: histOf(vals)}
}

func TestDetect(t *testing.T) {
	t.Parallel()
	key := ProxyKey{"tenant-a", "org", "prod", "orders"}
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	noisy := func(i int) int64 { return int64([]int{1, 2, 3, 2, 0, 2, 4, 1}[i%8]) }
	clean := func(int) int64 { return 0 }
	// baseline returns 60 minutes of steady but noisy traffic before t0.
	baseline := func(calls int64, errs func(i int) int64, medianMS float64) []Point {
		rng := rand.New(rand.NewPCG(1, 1))
		var pts []Point
		for i := 0; i < 60; i++ {
			pts = append(pts, minuteOf(rng, t0.Add(time.Duration(i-60)*time.Minute), calls, errs(i), medianMS, 1))
		}
		return pts
	}
	cfg := DefaultConfig().Anomaly
	cases := []struct {
		name     string
		base     []Point
		calls    int64
		errors   int64
		medianMS float64
		slow     float64
		want     []string
	}{
		{"steady minute", baseline(100, noisy, 100), 100, 4, 100, 1, nil},
		{"error spike", baseline(100, noisy, 100), 100, 30, 100, 1, []string{MetricErrorRate}},
		{"latency spike", baseline(100, noisy, 100), 100, 2, 100, 4, []string{MetricP95Latency}},
		{"both", baseline(100, noisy, 100), 100, 60, 100, 4, []string{MetricErrorRate, MetricP95Latency}},
		{"quiet minute is not judged", baseline(100, noisy, 100), 5, 5, 100, 20, nil},
		{"quiet baseline is not a baseline", baseline(10, noisy, 100), 100, 90, 100, 20, nil},
		{"drops are not flagged", baseline(100, noisy, 100), 100, 0, 100, 0.2, nil},
		{"small rise on a clean proxy", baseline(100, clean, 100), 100, 3, 100, 1, nil},
		{"clear rise on a clean proxy", baseline(100, clean, 100), 100, 12, 100, 1, []string{MetricErrorRate}},
		{"few errors in a small minute", baseline(20, func(i int) int64 { return int64(i % 2) }, 100), 20, 4, 100, 1, nil},
		{"fast proxy slower by a few ms", baseline(100, noisy, 8), 100, 2, 8, 3, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := minuteOf(rand.New(rand.NewPCG(2, 2)), t0, c.calls, c.errors, c.medianMS, c.slow)
			got := Detect(map[ProxyKey][]Point{key: append(c.base, m)}, t0, t0.Add(time.Minute), cfg)
			var metrics []string
			for _, a := range got {
				metrics = append(metrics, a.Metric)
				if a.ProxyKey != key || !a.Minute.Equal(t0) || a.Score < cfg.Z || a.BaselineMinutes == 0 {
					t.Errorf("anomaly %+v", a)
				}
			}
			if !slices.Equal(metrics, c.want) {
				t.Fatalf("flagged %v, want %v (%+v)", metrics, c.want, got)
			}
		})
	}
	t.Run("only minutes in [from, to) are judged", func(t *testing.T) {
		pts := append(baseline(100, noisy, 100), minuteOf(rand.New(rand.NewPCG(3, 3)), t0, 100, 50, 100, 5))
		if got := Detect(map[ProxyKey][]Point{key: pts}, t0.Add(time.Minute), t0.Add(5*time.Minute), cfg); len(got) != 0 {
			t.Fatalf("judged a minute outside the window: %+v", got)
		}
	})
}

// TestDetectFalseAlarms simulates many hours of steady traffic at several
// volumes, error rates and latencies and counts flagged minutes.
func TestDetectFalseAlarms(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig().Anomaly
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, p := range []struct {
		calls    int64
		errRate  float64
		medianMS float64
	}{{20, 0.05, 100}, {40, 0.03, 120}, {25, 0.08, 300}, {80, 0.005, 40}, {20, 0.15, 700}, {200, 0.02, 100}} {
		flagged, judged := 0, 0
		for seed := uint64(0); seed < 40; seed++ {
			rng := rand.New(rand.NewPCG(seed, 7))
			var pts []Point
			for m := 0; m < 180; m++ {
				var errs int64
				for range p.calls {
					if rng.Float64() < p.errRate {
						errs++
					}
				}
				pts = append(pts, minuteOf(rng, t0.Add(time.Duration(m)*time.Minute), p.calls, errs, p.medianMS, 1))
			}
			judged += 120
			flagged += len(Detect(map[ProxyKey][]Point{{}: pts}, t0.Add(60*time.Minute), t0.Add(180*time.Minute), cfg))
		}
		if flagged > 0 {
			t.Errorf("%d calls/min, %.1f%% errors, median %.0f ms: %d of %d steady minutes flagged", p.calls, 100*p.errRate, p.medianMS, flagged, judged)
		}
	}
}

// TestHistQuantileMatchesSQL: detection's Go quantile and the views' SQL
// quantile read the same histogram the same way.
func TestHistQuantileMatchesSQL(t *testing.T) {
	t.Parallel()
	db := testkit.New(t, testkit.Postgres)
	rng := rand.New(rand.NewPCG(9, 9))
	vals := make([]float64, 500)
	for i := range vals {
		vals[i] = float64(lognormal(rng, 150, 1))
	}
	vals[0], vals[1] = 0, 0
	h := histOf(vals)
	for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.95, 0.99, 1} {
		var want float64
		if err := db.Admin.QueryRow(context.Background(), "SELECT apigee.latency_hist_quantile(apigee.latency_hist_of($1), $2)", vals, q).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if got := h.Quantile(q); math.Abs(got-want) > 1e-9*math.Max(1, want) {
			t.Errorf("q %v: Go %v, SQL %v", q, got, want)
		}
	}
	var bins []int32
	if err := db.Admin.QueryRow(context.Background(), "SELECT (apigee.latency_hist_of($1)).bins", vals).Scan(&bins); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(bins, h.Bins) {
		t.Errorf("Go bins %v, SQL bins %v", h.Bins, bins)
	}
}

func TestBinomialZ(t *testing.T) {
	t.Parallel()
	cases := []struct {
		k, n   int64
		p      float64
		lo, hi float64
	}{
		{0, 10, 0.1, 0, 0},
		{1, 1, 0.5, -0.01, 0.01},  // P(X ≥ 1) = 0.5
		{10, 50, 0.02, 5.0, 5.5},  // ≈ 1.1e-7
		{50, 100, 0.02, 39.9, 40}, // capped
		{3, 100, 0.02, 0.3, 0.9},  // ordinary
		{3, 100, 0, 40, 40},       // impossible under p = 0
	}
	for _, c := range cases {
		if z := binomialZ(c.k, c.n, c.p); z < c.lo || z > c.hi || math.IsNaN(z) {
			t.Errorf("binomialZ(%d, %d, %v) = %v, want in [%v, %v]", c.k, c.n, c.p, z, c.lo, c.hi)
		}
	}
}

// steadyTraffic returns minutes [from, to) of one proxy: perMinute calls,
// each an error with probability errRate, latencies lognormal around
// medianMS; spike (when not nil) rewrites a minute's calls.
func steadyTraffic(rng *rand.Rand, tenant, proxy string, from, to time.Time, perMinute int, errRate, medianMS float64, spike func(m time.Time, c *call)) []call {
	var out []call
	for m := from; m.Before(to); m = m.Add(time.Minute) {
		for i := 0; i < perMinute; i++ {
			c := call{at: m.Add(time.Duration(rng.IntN(60_000)) * time.Millisecond), tenant: tenant, proxy: proxy, status: 200,
				total: ptr(lognormal(rng, medianMS, 0.4))}
			if rng.Float64() < errRate {
				c.status = 503
			}
			if spike != nil {
				spike(m, &c)
			}
			out = append(out, c)
		}
	}
	return out
}

func TestAnomalies(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Minute)
		errorSpike, latencySpike, tinySpike := now.Add(-20*time.Minute), now.Add(-30*time.Minute), now.Add(-10*time.Minute)
		rng := rand.New(rand.NewPCG(31, 32))
		from := now.Add(-150 * time.Minute)
		var calls []call
		calls = append(calls, steadyTraffic(rng, "tenant-a", "orders", from, now, 60, 0.02, 100, func(m time.Time, c *call) {
			if m.Equal(errorSpike) && rng.IntN(2) == 0 {
				c.status = 500
			}
		})...)
		calls = append(calls, steadyTraffic(rng, "tenant-a", "payments", from, now, 60, 0.02, 100, func(m time.Time, c *call) {
			if m.Equal(latencySpike) {
				*c.total *= 5
			}
		})...)
		calls = append(calls, steadyTraffic(rng, "tenant-a", "catalog", from, now, 40, 0.05, 250, nil)...)
		calls = append(calls, steadyTraffic(rng, "tenant-b", "orders", from, now, 30, 0.01, 60, nil)...)
		// A quiet proxy whose every call fails for a minute pages no one.
		calls = append(calls, steadyTraffic(rng, "tenant-a", "tiny", from, now, 3, 0.1, 80, func(m time.Time, c *call) {
			if m.Equal(tinySpike) {
				c.status, *c.total = 500, 9000
			}
		})...)
		insertCalls(t, db, calls)

		ps := pubsubtest.New(t, "test-project")
		srv, opts := ps.Server, ps.ClientOptions()
		if _, err := ps.Client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/test-project/topics/alerts"}); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig()
		cfg.AlertTopic = "alerts"
		cfg.PubSubProject = "test-project"
		pub, err := NewPubSubPublisher(ctx, cfg, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pub.Close() })
		r := newTestRunner(t, db, cfg, pub)
		r.now = func() time.Time { return now.Add(30 * time.Second) }

		s := mustRun(t, r)
		type flag struct {
			proxy, metric string
			minute        time.Time
		}
		want := []flag{{"payments", MetricP95Latency, latencySpike}, {"orders", MetricErrorRate, errorSpike}}
		rows, err := db.Admin.Query(ctx, "SELECT apiproxy, metric, bucket_start, alert_state, score FROM apigee.anomalies ORDER BY bucket_start")
		if err != nil {
			t.Fatal(err)
		}
		var got []flag
		for rows.Next() {
			var f flag
			var state string
			var score float64
			if err := rows.Scan(&f.proxy, &f.metric, &f.minute, &state, &score); err != nil {
				t.Fatal(err)
			}
			if state != "sent" || score < cfg.Anomaly.Z {
				t.Errorf("anomaly %+v: state %s, score %v", f, state, score)
			}
			got = append(got, f)
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		if len(got) != len(want) {
			t.Fatalf("flagged %+v, want %+v", got, want)
		}
		for i := range want {
			if got[i].proxy != want[i].proxy || got[i].metric != want[i].metric || !got[i].minute.Equal(want[i].minute) {
				t.Fatalf("flagged %+v, want %+v", got, want)
			}
		}
		if s.AnomaliesFound != 2 || s.AlertsPublished != 2 {
			t.Fatalf("summary %+v, want 2 anomalies found and published", s)
		}

		msgs := srv.Messages()
		if len(msgs) != 2 {
			t.Fatalf("%d messages published, want 2", len(msgs))
		}
		for _, m := range msgs {
			var a Alert
			if err := json.Unmarshal(m.Data, &a); err != nil {
				t.Fatalf("alert %q: %v", m.Data, err)
			}
			if a.Tenant != "tenant-a" || a.ID == 0 || a.Observed <= a.Baseline || m.Attributes["apiproxy"] != a.APIProxy || m.Attributes["metric"] != a.Metric {
				t.Errorf("alert %+v with attributes %v", a, m.Attributes)
			}
		}

		t.Run("each anomaly is published once", func(t *testing.T) {
			if s := mustRun(t, r); s.AnomaliesFound != 0 || s.AlertsPublished != 0 {
				t.Fatalf("second run: %+v", s)
			}
			// Forget how far detection got: the minutes are judged again,
			// flag the same anomalies, and nothing new is recorded or sent.
			if _, err := db.Admin.Exec(ctx, "UPDATE apigee.rollup_state SET anomalies_evaluated_until = NULL"); err != nil {
				t.Fatal(err)
			}
			if s := mustRun(t, r); s.AnomaliesFound != 0 || s.AlertsPublished != 0 {
				t.Fatalf("re-evaluation: %+v", s)
			}
			if n := len(srv.Messages()); n != 2 {
				t.Fatalf("%d messages after re-runs, want 2", n)
			}
		})
		t.Run("no topic: recorded, not alerted", func(t *testing.T) {
			if _, err := db.Admin.Exec(ctx, "DELETE FROM apigee.anomalies; UPDATE apigee.rollup_state SET anomalies_evaluated_until = NULL"); err != nil {
				t.Fatal(err)
			}
			quiet := newTestRunner(t, db, testConfig(), nil)
			quiet.now = r.now
			if s := mustRun(t, quiet); s.AnomaliesFound != 2 || s.AlertsPublished != 0 {
				t.Fatalf("run without topic: %+v", s)
			}
			if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.anomalies WHERE alert_state = 'none'"); n != 2 {
				t.Fatalf("%d anomalies in state none, want 2", n)
			}
		})
	})
}

// TestSteadyTrafficStaysQuiet runs detection over three hours of noisy
// but steady traffic on several proxies and expects no anomaly.
func TestSteadyTrafficStaysQuiet(t *testing.T) {
	t.Parallel()
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		now := time.Now().UTC().Truncate(time.Minute)
		rng := rand.New(rand.NewPCG(41, 42))
		from := now.Add(-180 * time.Minute)
		var calls []call
		for _, p := range []struct {
			proxy     string
			perMinute int
			errRate   float64
			medianMS  float64
		}{{"orders", 40, 0.03, 120}, {"payments", 25, 0.08, 300}, {"catalog", 80, 0.005, 40}, {"search", 20, 0.15, 700}} {
			calls = append(calls, steadyTraffic(rng, "tenant-a", p.proxy, from, now, p.perMinute, p.errRate, p.medianMS, nil)...)
		}
		insertCalls(t, db, calls)
		cfg := testConfig()
		cfg.Anomaly.Lookback = 2 * time.Hour
		r := newTestRunner(t, db, cfg, nil)
		r.now = func() time.Time { return now.Add(30 * time.Second) }
		if s := mustRun(t, r); s.AnomaliesFound != 0 {
			t.Fatalf("steady traffic flagged %d anomalies", s.AnomaliesFound)
		}
		// Sanity: the window really held judgeable minutes (≥ MinCalls each).
		judged := queryInt(t, db.Admin, `SELECT count(*) FROM apigee.error_rate_1m WHERE bucket_start >= $1 AND bucket_start < $2 AND calls >= $3`,
			now.Add(-2*time.Hour-2*time.Minute), now.Add(-2*time.Minute), cfg.Anomaly.MinCalls)
		if judged < 300 {
			t.Fatalf("only %d judgeable proxy-minutes", judged)
		}
	})
}
