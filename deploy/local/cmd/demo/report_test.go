package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/privacy"
)

var (
	from    = time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)
	orders  = simulator.Proxy{Organization: "acme-prod", Environment: "prod", APIProxy: "orders-v1"}
	catalog = simulator.Proxy{Organization: "acme-prod", Environment: "prod", APIProxy: "catalog-v2"}
)

// sample is a consistent report of a run: 1000 published = 950 stored +
// 20 rejected + 30 publisher retries, both spikes flagged.
func sample() *Report {
	spikes := []simulator.Spike{
		{Metric: simulator.MetricErrorRate, Proxy: orders, From: from.Add(50 * time.Minute), To: from.Add(52 * time.Minute), Value: 0.3},
		{Metric: simulator.MetricLatency, Proxy: catalog, From: from.Add(70 * time.Minute), To: from.Add(72 * time.Minute), Value: 5},
	}
	r := &Report{
		Generated: from.Add(2 * time.Hour), RunID: "abc123", From: from, To: from.Add(90 * time.Minute),
		Rate: 600, Duration: 35 * time.Second, RunStart: from.Add(time.Hour), Elapsed: 50 * time.Second,
		Sim: simulator.Stats{
			Sent: 1000, Published: 1000, Calls: 950, Malformed: 20, Duplicates: 30,
			MalformedByReason: map[string]int64{"not_json": 12, "missing_field": 8},
			PerProxy:          map[simulator.Proxy]*simulator.ProxyTruth{orders: {Calls: 600}, catalog: {Calls: 350}},
			Elapsed:           35 * time.Second,
		},
		Proxies: []ProxyRow{
			{Proxy: orders, Calls: 600, Published: 600, Errors: 30, P50: 80, P95: 170, P99: 250, Tenants: 3},
			{Proxy: catalog, Calls: 350, Published: 350, Errors: 5, P50: 60, P95: 140, P99: 300, Tenants: 3},
		},
		Anomalies: []AnomalyRow{
			{Minute: from.Add(50 * time.Minute), Tenant: "acme-retail", Proxy: orders, Metric: simulator.MetricErrorRate, Observed: 0.25, Baseline: 0.02, Score: 7, Injected: true},
			{Minute: from.Add(71 * time.Minute), Tenant: "acme-retail", Proxy: catalog, Metric: simulator.MetricLatency, Observed: 700, Baseline: 120, Score: 25, Injected: true},
			{Minute: from.Add(20 * time.Minute), Tenant: "globex-eu", Proxy: simulator.Proxy{Organization: "globex", Environment: "prod", APIProxy: "quotes-v1"},
				Metric: simulator.MetricLatency, Observed: 400, Baseline: 200, Score: 5.5},
		},
		Rejects: []RejectRow{{"not_json", "", 12}, {"missing_field", "schema", 5}, {"missing_field", "message_id", 3}},
		Stored:  950, Rejected: 20, Inserted: 950, Duplicates: 30, Batches: 40,
		Statuses: map[int]int64{204: 1000},
		Rotations: []rotation{
			{At: from.Add(time.Hour), Summary: rotate.Summary{Status: "rotated", RotatedLogin: "apigee_ingest_a", NewVersion: "v1"}},
			{At: from.Add(time.Hour + 17*time.Second), Summary: rotate.Summary{Status: "rotated", RotatedLogin: "apigee_ingest_b", NewVersion: "v2"}},
		},
		ByOrg: map[string][]MinuteRow{}, SpikeSeries: map[string][]MinuteRow{},
	}
	r.Relay.Delivered, r.Relay.Acked = 1000, 1000
	for i := range 90 {
		m := MinuteRow{Minute: from.Add(time.Duration(i) * time.Minute), Calls: 10 + int64(i), Errors: 1, P50: 80, P95: 170, P99: 260}
		r.Minutes = append(r.Minutes, m)
		r.ByOrg["acme-prod"] = append(r.ByOrg["acme-prod"], m)
	}
	for _, s := range spikes {
		found := []AnomalyRow{}
		for _, a := range r.Anomalies {
			if a.Injected && a.Proxy == s.Proxy {
				found = append(found, a)
			}
		}
		r.Spikes = append(r.Spikes, SpikeResult{Spike: s, Found: found})
		r.SpikeSeries[s.Proxy.String()] = r.Minutes[:60]
	}
	return r
}

func TestChecks(t *testing.T) {
	tests := []struct {
		name   string
		change func(r *Report)
		failed []string // names of the checks that must fail
	}{
		{"consistent run", func(*Report) {}, nil},
		{"a row lost", func(r *Report) { r.Stored--; r.Proxies[0].Calls-- },
			[]string{"published = stored", "every proxy's calls", "duplicates absorbed"}},
		{"a reject with the wrong reason", func(r *Report) { r.Rejects[0].Reason = "invalid_field" },
			[]string{"every malformed message"}},
		{"a spike missed", func(r *Report) { r.Spikes[1].Found = nil },
			[]string{"injected spike found: latency"}},
		{"a failed delivery", func(r *Report) { r.Failed = 1; r.Statuses[503] = 1 },
			[]string{"rotation mid-run"}},
		{"no mid-run rotation", func(r *Report) { r.Rotations = r.Rotations[:1] },
			[]string{"rotation mid-run"}},
		{"a proxy never stored", func(r *Report) {
			r.Sim.PerProxy[simulator.Proxy{Organization: "initech", Environment: "prod", APIProxy: "payroll-v1"}] = &simulator.ProxyTruth{Calls: 1}
		}, []string{"every proxy's calls"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := sample()
			tc.change(r)
			r.check()
			var failed []string
			for _, c := range r.Checks {
				if !c.OK {
					failed = append(failed, c.Name)
				}
			}
			if len(failed) != len(tc.failed) {
				t.Fatalf("failed checks %q, want %q", failed, tc.failed)
			}
			for i, want := range tc.failed {
				if !strings.HasPrefix(failed[i], want) {
					t.Errorf("failed check %q, want %q", failed[i], want)
				}
			}
			if r.ok() != (len(tc.failed) == 0) {
				t.Errorf("ok() = %v", r.ok())
			}
		})
	}
}

func TestHTMLReportIsSelfContained(t *testing.T) {
	r := sample()
	r.check()
	path := filepath.Join(t.TempDir(), "report.html")
	if err := writeHTML(path, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	// Nothing fetched from anywhere: no script, stylesheet link, image or
	// URL attribute, no @import or url() in the CSS.
	for _, bad := range []string{"<script", "<link", "<img", "src=", "href=", "@import", "url(", "http://", "https://"} {
		if strings.Contains(page, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	if n := strings.Count(page, "<svg"); n != 3 {
		t.Errorf("%d charts, want traffic, errors and latency", n)
	}
	if n := strings.Count(page, `class="marker"`); n != 3+2 { // 3 anomalies + 2 legend dots
		t.Errorf("%d markers, want one per anomaly plus the legends", n)
	}
	for _, want := range []string{"credential rotation", "injected", "orders-v1", "catalog-v2 p95", "✓", "acme-retail"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Every polyline point is inside the plot.
	for _, m := range regexp.MustCompile(`points="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		for _, p := range strings.Fields(m[1]) {
			var x, y float64
			if _, err := fmt.Sscanf(p, "%f,%f", &x, &y); err != nil || x < padLeft-1 || x > chartW-padRight+1 || y < padTop-1 || y > chartH-padBottom+1 {
				t.Fatalf("point %q outside the plot (%v)", p, err)
			}
		}
	}
}

func TestNiceScale(t *testing.T) {
	tests := []struct {
		max, top, step float64
	}{
		{0, 1, 0.25},
		{math.NaN(), 1, 0.25},
		{9, 10, 2},
		{370, 400, 100},
		{28.5, 40, 10},
		{0.031, 0.04, 0.01},
		{1000, 1500, 500},
		{4, 5, 1},
	}
	for _, tc := range tests {
		top, step := niceScale(tc.max)
		if math.Abs(top-tc.top) > 1e-9 || math.Abs(step-tc.step) > 1e-9 {
			t.Errorf("niceScale(%v) = %v, %v; want %v, %v", tc.max, top, step, tc.top, tc.step)
		}
	}
	// Whatever the data: the top covers it, the step is 1, 2 or 5 × 10^k,
	// and there are three to six ticks.
	for v := 0.0013; v < 1e6; v *= 1.37 {
		top, step := niceScale(v)
		mant := step / math.Pow(10, math.Floor(math.Log10(step)+1e-9))
		ticks := top / step
		if top < v || (math.Abs(mant-1) > 1e-6 && math.Abs(mant-2) > 1e-6 && math.Abs(mant-5) > 1e-6) || ticks < 3 || ticks > 6 {
			t.Fatalf("niceScale(%v) = %v, %v", v, top, step)
		}
	}
}

// The privacy check fails the report when anything is in clear, and the
// report shows what is stored.
func TestPrivacyCheck(t *testing.T) {
	r := sample()
	r.Privacy = PrivacyReport{Policy: demoPrivacy, Sample: []PersonalRow{{ClientIP: "203.0.113.0", DeveloperEmail: "p1:AAAAAAAAAAAAAAAAAAAAAA", Tenant: "acme-retail", Calls: 7}}}
	r.check()
	if !r.ok() {
		t.Fatalf("checks failed: %+v", r.Checks)
	}
	var out strings.Builder
	r.write(&out)
	if !strings.Contains(out.String(), "p1:AAAAAAAAAAAAAAAAAAAAAA") || !strings.Contains(out.String(), "INGEST_PRIVACY="+demoPrivacy) {
		t.Fatalf("the report does not show the stored pseudonyms:\n%s", out.String())
	}
	for _, clear := range []func(*PrivacyReport){
		func(p *PrivacyReport) { p.ClearRows = 1 },
		func(p *PrivacyReport) { p.ClearRejects = 1 },
		func(p *PrivacyReport) { p.ClearLogLines = 1 },
	} {
		r := sample()
		r.Privacy.Policy = demoPrivacy
		clear(&r.Privacy)
		r.check()
		if r.ok() {
			t.Fatalf("a value in clear passed the checks: %+v", r.Privacy)
		}
	}
}

func TestClearPatterns(t *testing.T) {
	p, err := privacy.ParsePolicy(demoPrivacy)
	if err != nil {
		t.Fatal(err)
	}
	re := (&demo{privacy: p}).clearPattern()
	for _, s := range []string{"203.0.113.7", "client 192.0.2.254 ", "2001:db8::1a2b", "web-team@acme.example"} {
		if !re.MatchString(s) {
			t.Errorf("%q not found", s)
		}
	}
	for _, s := range []string{"203.0.113.0", "2001:db8::", "2001:db8::/48", "p1:Zm9vYmFyYmF6cXV4cXV1eA", "acme.example"} {
		if re.MatchString(s) {
			t.Errorf("%q taken for a clear value", s)
		}
	}
}
