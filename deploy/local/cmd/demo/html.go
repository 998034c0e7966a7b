package main

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"os"
	"strings"
	"time"

	"apigee-timescale/deploy/local/simulator"
)

// series is one line of a chart; NaN values are gaps.
type series struct {
	Name   string
	Color  string
	Values []float64
	Dash   bool
}

// band shades an x range, e.g. an injected spike.
type band struct {
	From, To int // minute indexes, To exclusive
	Label    string
	Color    string
}

// marker is a point of interest, e.g. a flagged minute.
type marker struct {
	X     int
	Y     float64
	Label string
}

// chartSpec is everything one SVG chart shows.
type chartSpec struct {
	Title   string
	Unit    string
	Start   time.Time // minute of index 0
	N       int       // minutes
	Series  []series
	Bands   []band
	Markers []marker
	Lines   []band // vertical lines at From (To unused)
}

const (
	chartW, chartH                       = 920, 270
	padLeft, padRight, padTop, padBottom = 60, 150, 28, 34
)

// svg renders a chart as inline SVG; it needs no script, font or image.
func (c chartSpec) svg() template.HTML {
	var b strings.Builder
	plotW, plotH := float64(chartW-padLeft-padRight), float64(chartH-padTop-padBottom)
	maxY := 0.0
	for _, s := range c.Series {
		for _, v := range s.Values {
			if !math.IsNaN(v) && v > maxY {
				maxY = v
			}
		}
	}
	top, step := niceScale(maxY)
	x := func(i float64) float64 {
		if c.N <= 1 {
			return float64(padLeft)
		}
		return float64(padLeft) + plotW*i/float64(c.N-1)
	}
	y := func(v float64) float64 { return float64(padTop) + plotH*(1-v/top) }

	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`,
		chartW, chartH, chartW, chartH, html.EscapeString(c.Title))
	fmt.Fprintf(&b, `<text x="%d" y="16" class="title">%s</text>`, padLeft, html.EscapeString(c.Title))
	for _, bd := range c.Bands {
		x0, x1 := x(float64(bd.From)-0.5), x(float64(bd.To)-0.5)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%.1f" fill="%s" opacity="0.18"/>`,
			max(x0, float64(padLeft)), padTop, max(1, x1-x0), plotH, bd.Color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="band" fill="%s">%s</text>`, x0, padTop+11, bd.Color, html.EscapeString(bd.Label))
	}
	// Grid and y axis.
	for v := 0.0; v <= top+step/2; v += step {
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" class="grid"/>`, padLeft, float64(padLeft)+plotW, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="axis" text-anchor="end">%s</text>`, padLeft-6, y(v)+4, formatTick(v, step))
	}
	fmt.Fprintf(&b, `<text x="12" y="%.1f" class="axis" transform="rotate(-90 12 %.1f)" text-anchor="middle">%s</text>`,
		float64(padTop)+plotH/2, float64(padTop)+plotH/2, html.EscapeString(c.Unit))
	// X axis: a tick every 15 minutes of event time.
	for i := 0; i < c.N; i++ {
		t := c.Start.Add(time.Duration(i) * time.Minute)
		if t.Minute()%15 != 0 {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="tick"/>`, x(float64(i)), x(float64(i)), float64(padTop)+plotH, float64(padTop)+plotH+4)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="middle">%s</text>`, x(float64(i)), float64(padTop)+plotH+17, t.UTC().Format("15:04"))
	}
	for _, ln := range c.Lines {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="%s" stroke-dasharray="4 3"/>`, x(float64(ln.From)), x(float64(ln.From)), padTop, float64(padTop)+plotH, ln.Color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="band" fill="%s">%s</text>`, x(float64(ln.From))+3, float64(padTop)+plotH-4, ln.Color, html.EscapeString(ln.Label))
	}
	// Lines, broken at gaps.
	for _, s := range c.Series {
		var pts []string
		flush := func() {
			if len(pts) > 1 {
				dash := ""
				if s.Dash {
					dash = ` stroke-dasharray="5 3"`
				}
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>`, s.Color, dash, strings.Join(pts, " "))
			}
			pts = pts[:0]
		}
		for i, v := range s.Values {
			if math.IsNaN(v) {
				flush()
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(float64(i)), y(v)))
		}
		flush()
	}
	for _, m := range c.Markers {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4.5" class="marker"><title>%s</title></circle>`,
			x(float64(m.X)), y(math.Min(m.Y, top)), html.EscapeString(m.Label))
	}
	// Legend.
	for i, s := range c.Series {
		ly := padTop + 10 + 18*i
		dash := ""
		if s.Dash {
			dash = ` stroke-dasharray="5 3"`
		}
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`, chartW-padRight+14, chartW-padRight+34, ly, ly, s.Color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="legend">%s</text>`, chartW-padRight+40, ly+4, html.EscapeString(s.Name))
	}
	if len(c.Markers) > 0 {
		ly := padTop + 10 + 18*len(c.Series)
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="4.5" class="marker"/><text x="%d" y="%d" class="legend">anomaly flagged</text>`,
			chartW-padRight+24, ly, chartW-padRight+40, ly+4)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// niceScale returns an axis top and tick step (1, 2 or 5 × 10^k) for data
// up to maxY, with four to eight ticks.
func niceScale(maxY float64) (top, step float64) {
	if maxY <= 0 || math.IsNaN(maxY) {
		return 1, 0.25
	}
	raw := maxY * 1.08 / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * mag; step >= raw {
			break
		}
	}
	return math.Ceil(maxY*1.08/step) * step, step
}

func formatTick(v, step float64) string {
	if step >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	decimals := int(math.Ceil(-math.Log10(step)))
	return fmt.Sprintf("%.*f", decimals, v)
}

// grid spreads minute rows over the window's minute indexes.
func grid(start time.Time, n int, rows []MinuteRow, val func(MinuteRow) float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = math.NaN()
	}
	for _, r := range rows {
		i := int(r.Minute.Sub(start) / time.Minute)
		if i >= 0 && i < n {
			out[i] = val(r)
		}
	}
	return out
}

// charts builds the report's three charts.
func (r *Report) charts() []template.HTML {
	start := r.From.Truncate(time.Minute)
	n := int(r.To.Sub(start)/time.Minute) + 1
	idx := func(t time.Time) int { return int(t.Sub(start) / time.Minute) }

	calls := func(m MinuteRow) float64 { return float64(m.Calls) }
	traffic := chartSpec{Title: "Traffic: calls per minute of event time", Unit: "calls / minute", Start: start, N: n,
		Series: []series{{Name: "all proxies", Color: "#1f2937", Values: grid(start, n, r.Minutes, calls)}}}
	for i, org := range []string{"acme-prod", "globex", "initech"} {
		traffic.Series = append(traffic.Series, series{Name: org, Color: []string{"#2563eb", "#059669", "#d97706"}[i], Values: grid(start, n, r.ByOrg[org], calls)})
	}
	// The mid-run rotation, placed in event time (it ran at a wall-clock
	// moment; event time advanced evenly with the wall clock).
	for _, rot := range r.Rotations[min(1, len(r.Rotations)):] {
		frac := float64(rot.At.Sub(r.RunStart)) / float64(r.Duration)
		at := r.From.Add(time.Duration(frac * float64(r.To.Sub(r.From))))
		traffic.Lines = append(traffic.Lines, band{From: idx(at), Label: "credential rotation", Color: "#7c3aed"})
	}
	errorsChart := chartSpec{Title: "Errors: share of calls with is_error or status ≥ 500", Unit: "error rate %", Start: start, N: n,
		Series: []series{{Name: "all proxies", Color: "#1f2937", Values: grid(start, n, r.Minutes, func(m MinuteRow) float64 { return 100 * ratio(m.Errors, m.Calls) })}}}
	latency := chartSpec{Title: "Latency: total_response_time percentiles per minute (merged rollup histograms)", Unit: "ms", Start: start, N: n,
		Series: []series{
			{Name: "p50", Color: "#059669", Values: grid(start, n, r.Minutes, func(m MinuteRow) float64 { return m.P50 })},
			{Name: "p95", Color: "#d97706", Values: grid(start, n, r.Minutes, func(m MinuteRow) float64 { return m.P95 })},
			{Name: "p99", Color: "#dc2626", Values: grid(start, n, r.Minutes, func(m MinuteRow) float64 { return m.P99 })},
		}}
	for _, s := range r.Spikes {
		b := band{From: idx(s.From), To: idx(s.To), Label: "injected", Color: "#dc2626"}
		rows := r.SpikeSeries[s.Proxy.String()]
		switch s.Metric {
		case simulator.MetricErrorRate:
			errorsChart.Bands = append(errorsChart.Bands, b)
			errorsChart.Series = append(errorsChart.Series, series{Name: s.Proxy.APIProxy, Color: "#7c3aed", Dash: true,
				Values: grid(start, n, rows, func(m MinuteRow) float64 { return 100 * ratio(m.Errors, m.Calls) })})
		case simulator.MetricLatency:
			latency.Bands = append(latency.Bands, b)
			latency.Series = append(latency.Series, series{Name: s.Proxy.APIProxy + " p95", Color: "#7c3aed", Dash: true,
				Values: grid(start, n, rows, func(m MinuteRow) float64 { return m.P95 })})
		}
	}
	for _, a := range r.Anomalies {
		label := fmt.Sprintf("%s %s %s: %s (baseline %s, score %.1f)", a.Minute.Format("15:04"), a.Proxy, a.Metric,
			metric(a.Metric, a.Observed), metric(a.Metric, a.Baseline), a.Score)
		switch a.Metric {
		case simulator.MetricErrorRate:
			errorsChart.Markers = append(errorsChart.Markers, marker{X: idx(a.Minute), Y: 100 * a.Observed, Label: label})
		case simulator.MetricLatency:
			latency.Markers = append(latency.Markers, marker{X: idx(a.Minute), Y: a.Observed, Label: label})
		}
	}
	return []template.HTML{traffic.svg(), errorsChart.svg(), latency.svg()}
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"pct":    func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) },
	"ms":     func(v float64) string { return fmt.Sprintf("%.0f", v) },
	"hm":     func(t time.Time) string { return t.UTC().Format("15:04") },
	"hms":    func(t time.Time) string { return t.Format("15:04:05") },
	"metric": metric,
	"round":  func(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>apigee-timescale demo {{.R.RunID}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#111827;max-width:1000px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.sub{color:#6b7280}table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #f1f5f9;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f8fafc;font-weight:600}
.ok{color:#059669}.bad{color:#dc2626;font-weight:600}.inj{background:#fef2f2}
svg.chart{display:block;margin:10px 0;background:#fff;border:1px solid #e5e7eb;border-radius:6px}
svg .title{font-size:13px;font-weight:600;fill:#111827}svg .axis{font-size:11px;fill:#6b7280}svg .legend{font-size:12px;fill:#374151}
svg .band{font-size:11px}svg .grid{stroke:#f1f5f9}svg .tick{stroke:#9ca3af}svg .marker{fill:#dc2626;stroke:#fff;stroke-width:1.5}
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
</style></head><body>
<h1>apigee-timescale demo</h1>
<div class="sub">run {{.R.RunID}} · generated {{.R.Generated.UTC.Format "2006-01-02 15:04:05"}} UTC ·
{{.R.Sim.Published}} records published in {{.R.Duration}} covering event time {{hm .R.From}}–{{hm .R.To}} UTC (a day's traffic shape, compressed) · total run {{round .R.Elapsed}}</div>

<h2>Checks</h2>
<ul>{{range .R.Checks}}<li>{{if .OK}}<span class="ok">✓</span>{{else}}<span class="bad">✗</span>{{end}} <b>{{.Name}}</b> — {{.Detail}}</li>{{end}}</ul>

<h2>Over time</h2>
{{range .Charts}}{{.}}{{end}}
<p class="sub">From <code>apigee.api_calls_1m</code>, the minute rollups written by the rollup function; percentiles come from merged log-bucketed histograms. Shaded: the injected spikes. Dots: minutes the rollup's anomaly detection flagged (hover for details).</p>

<h2>Per API proxy</h2>
<table><tr><th>proxy</th><th>calls</th><th>published</th><th>errors</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>tenants</th></tr>
{{range .R.Proxies}}<tr><td>{{.Proxy}}</td><td>{{.Calls}}</td><td>{{.Published}}</td><td>{{pct .ErrorRate}}</td><td>{{ms .P50}}</td><td>{{ms .P95}}</td><td>{{ms .P99}}</td><td>{{.Tenants}}</td></tr>
{{end}}</table>
<p class="sub">Stored rows of this run in <code>apigee.api_calls</code>; exact percentiles of <code>total_response_time</code>; errors are calls with <code>is_error</code> or a status ≥ 500.</p>

<h2>Anomalies ({{len .R.Anomalies}})</h2>
<table><tr><th>minute</th><th>proxy</th><th>tenant</th><th>metric</th><th>observed</th><th>baseline</th><th>score</th><th>calls</th><th></th></tr>
{{range .R.Anomalies}}<tr{{if .Injected}} class="inj"{{end}}><td>{{hm .Minute}}</td><td>{{.Proxy}}</td><td>{{.Tenant}}</td><td>{{.Metric}}</td><td>{{metric .Metric .Observed}}</td><td>{{metric .Metric .Baseline}}</td><td>{{printf "%.1f" .Score}}</td><td>{{.Calls}}</td><td>{{if .Injected}}injected{{end}}</td></tr>
{{end}}</table>
<p class="sub">Injected: {{range .R.Spikes}}{{.Spike}} ({{len .Found}} minutes flagged); {{end}}</p>

<h2>Rejects by reason ({{.R.Rejected}})</h2>
<table><tr><th>reason</th><th>field</th><th>messages</th></tr>
{{range .R.Rejects}}<tr><td>{{.Reason}}</td><td>{{.Field}}</td><td>{{.Count}}</td></tr>{{end}}</table>

<h2>Personal data as stored</h2>
<p class="sub">{{if .R.Privacy.Policy}}<code>INGEST_PRIVACY={{.R.Privacy.Policy}}</code>: addresses truncated to their network, emails and subjects replaced by per-tenant HMAC pseudonyms before the rows are hashed and stored; the quarantine keeps the same.{{else}}<code>INGEST_PRIVACY</code> is not set: personal fields are stored as they came.{{end}} The most frequent values of this run:</p>
<table><tr><th>client_ip</th><th>developer_email</th><th>tenant</th><th>calls</th></tr>
{{range .R.Privacy.Sample}}<tr><td>{{.ClientIP}}</td><td><code>{{.DeveloperEmail}}</code></td><td>{{.Tenant}}</td><td>{{.Calls}}</td></tr>{{end}}</table>

<h2>Delivery, duplicates, rotation</h2>
<ul>
<li>{{.R.Relay.Delivered}} push requests: {{.R.Relay.Acked}} acknowledged, {{.R.Failed}} failed, {{.R.Relay.Retried}} retries, {{.R.Relay.DeadLettered}} dead-lettered; statuses {{.R.Statuses}}.</li>
<li>{{.R.Sim.Duplicates}} records published twice (publisher retries: a new Pub/Sub message ID, the same record); {{.R.Duplicates}} duplicate rows absorbed in {{.R.Batches}} batches.</li>
{{range $i, $r := .R.Rotations}}<li>Rotation {{if $i}}mid-run{{else}}bootstrap{{end}} at {{hms $r.At}}: <code>{{$r.Summary.RotatedLogin}}</code> re-passworded, <code>{{$r.Summary.NewVersion}}</code> added; failed deliveries before it: {{$r.FailedBefore}}.</li>
{{end}}<li>{{len .R.RollupRuns}} rollup runs, called as Cloud Scheduler would.</li>
</ul>
</body></html>
`))

// writeHTML writes the self-contained report.
func writeHTML(path string, r *Report) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := page.Execute(f, map[string]any{"R": r, "Charts": r.charts()}); err != nil {
		f.Close()
		return fmt.Errorf("report: %w", err)
	}
	return f.Close()
}
