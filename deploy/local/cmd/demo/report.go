package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/deploy/local/standin/pushrelay"
	"apigee-timescale/functions/rollup"
)

// Report is what the demo found, for the terminal and the HTML file.
type Report struct {
	Generated   time.Time
	RunID       string
	From, To    time.Time // event-time window
	Rate        float64
	Duration    time.Duration
	RunStart    time.Time // wall time the traffic started
	Elapsed     time.Duration
	Sim         simulator.Stats
	Spikes      []SpikeResult
	Proxies     []ProxyRow
	Anomalies   []AnomalyRow
	Rejects     []RejectRow
	Stored      int64 // rows of this run in api_calls
	Rejected    int64 // rejects quarantined since the run started
	Inserted    int64 // from ingest_batches
	Duplicates  int64 // duplicate rows absorbed, from ingest_batches
	Batches     int64
	Relay       pushrelay.Stats
	Statuses    map[int]int64
	Failed      int64 // delivery attempts not acknowledged
	Rotations   []rotation
	RollupRuns  []rollup.Summary
	RollupErrs  []string
	Minutes     []MinuteRow            // every proxy together
	ByOrg       map[string][]MinuteRow // calls per organization
	SpikeSeries map[string][]MinuteRow // per injected spike's proxy
	Privacy     PrivacyReport
	Checks      []Check
}

// SpikeResult is an injected incident and the anomalies that match it.
type SpikeResult struct {
	simulator.Spike
	Found []AnomalyRow
}

// ProxyRow is one proxy's stored calls.
type ProxyRow struct {
	simulator.Proxy
	Calls, Errors, Published int64
	P50, P95, P99            float64
	Tenants                  int
}

// ErrorRate is errors / calls.
func (p ProxyRow) ErrorRate() float64 { return ratio(p.Errors, p.Calls) }

// AnomalyRow is one row of apigee.anomalies.
type AnomalyRow struct {
	Minute   time.Time
	Tenant   string
	Proxy    simulator.Proxy
	Metric   string
	Observed float64
	Baseline float64
	Score    float64
	Calls    int64
	Injected bool
}

// RejectRow counts quarantined input by reason.
type RejectRow struct {
	Reason, Field string
	Count         int64
}

// MinuteRow is one minute of the rollups.
type MinuteRow struct {
	Minute        time.Time
	Calls, Errors int64
	P50, P95, P99 float64
}

// Check is one assertion of the report.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

func (r *Report) ok() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// collect queries the database and the relay and runs the checks.
func (d *demo) collect(ctx context.Context) (*Report, error) {
	db := d.db.Admin
	from, to := d.sim.Window()
	r := &Report{
		Generated: time.Now(), RunID: d.sim.RunID(), From: from, To: to,
		Rate: d.o.rate, Duration: d.o.duration, RunStart: d.runStart, Elapsed: time.Since(d.begin),
		Sim: d.sim.Stats(), Relay: d.relay.Stats(), Statuses: d.rec.Statuses(), Failed: d.rec.Failed(),
		ByOrg: map[string][]MinuteRow{}, SpikeSeries: map[string][]MinuteRow{},
	}
	d.mu.Lock()
	r.Rotations = append(r.Rotations, d.rotations...)
	r.RollupRuns = append(r.RollupRuns, d.rollupRuns...)
	r.RollupErrs = append(r.RollupErrs, d.rollupErrs...)
	d.mu.Unlock()
	pattern := "rrt-%-" + r.RunID + "-%"

	// Per proxy, from the raw rows: exact percentiles.
	rows, err := db.Query(ctx, `
		SELECT organization, environment, apiproxy, count(*),
		       count(*) FILTER (WHERE is_error OR response_status_code >= 500),
		       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_response_time),
		       percentile_cont(0.95) WITHIN GROUP (ORDER BY total_response_time),
		       percentile_cont(0.99) WITHIN GROUP (ORDER BY total_response_time),
		       count(DISTINCT tenant)
		FROM apigee.api_calls WHERE message_id LIKE $1
		GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3`, pattern)
	if err != nil {
		return nil, fmt.Errorf("report: per proxy: %w", err)
	}
	var p ProxyRow
	if _, err := pgx.ForEachRow(rows, []any{&p.Organization, &p.Environment, &p.APIProxy, &p.Calls, &p.Errors, &p.P50, &p.P95, &p.P99, &p.Tenants}, func() error {
		if t := r.Sim.PerProxy[p.Proxy]; t != nil {
			p.Published = t.Calls
		}
		r.Proxies = append(r.Proxies, p)
		r.Stored += p.Calls
		return nil
	}); err != nil {
		return nil, fmt.Errorf("report: per proxy: %w", err)
	}

	// Anomalies the rollup recorded in the window.
	rows, err = db.Query(ctx, `
		SELECT bucket_start, tenant, organization, environment, apiproxy, metric, observed, baseline, score, calls
		FROM apigee.anomalies WHERE bucket_start >= $1 AND bucket_start < $2
		ORDER BY bucket_start, organization, environment, apiproxy, metric`, from, to)
	if err != nil {
		return nil, fmt.Errorf("report: anomalies: %w", err)
	}
	var a AnomalyRow
	if _, err := pgx.ForEachRow(rows, []any{&a.Minute, &a.Tenant, &a.Proxy.Organization, &a.Proxy.Environment, &a.Proxy.APIProxy,
		&a.Metric, &a.Observed, &a.Baseline, &a.Score, &a.Calls}, func() error {
		r.Anomalies = append(r.Anomalies, a)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("report: anomalies: %w", err)
	}
	for _, s := range d.sim.Spikes() {
		sr := SpikeResult{Spike: s}
		for i := range r.Anomalies {
			a := &r.Anomalies[i]
			if a.Proxy == s.Proxy && a.Metric == s.Metric && !a.Minute.Before(s.From) && a.Minute.Before(s.To) {
				a.Injected = true
				sr.Found = append(sr.Found, *a)
			}
		}
		r.Spikes = append(r.Spikes, sr)
	}

	// Quarantine and batches since the traffic started.
	rows, err = db.Query(ctx, `
		SELECT reason, coalesce(field, ''), count(*) FROM apigee.ingest_rejects
		WHERE ingested_at >= $1 GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2`, d.runStart)
	if err != nil {
		return nil, fmt.Errorf("report: rejects: %w", err)
	}
	var rj RejectRow
	if _, err := pgx.ForEachRow(rows, []any{&rj.Reason, &rj.Field, &rj.Count}, func() error {
		r.Rejects = append(r.Rejects, rj)
		r.Rejected += rj.Count
		return nil
	}); err != nil {
		return nil, fmt.Errorf("report: rejects: %w", err)
	}
	if err := db.QueryRow(ctx, `
		SELECT count(*), coalesce(sum(rows_inserted), 0), coalesce(sum(rows_duplicate), 0)
		FROM apigee.ingest_batches WHERE committed_at >= $1`, d.runStart).Scan(&r.Batches, &r.Inserted, &r.Duplicates); err != nil {
		return nil, fmt.Errorf("report: batches: %w", err)
	}

	if r.Privacy, err = d.collectPrivacy(ctx, pattern); err != nil {
		return nil, err
	}

	// Minute series from the rollups the rollup function wrote.
	if r.Minutes, err = minutes(ctx, db, from, to, ""); err != nil {
		return nil, err
	}
	for _, org := range []string{"acme-prod", "globex", "initech"} {
		if r.ByOrg[org], err = minutes(ctx, db, from, to, "organization = $3", org); err != nil {
			return nil, err
		}
	}
	for _, s := range r.Spikes {
		key := s.Proxy.String()
		if _, done := r.SpikeSeries[key]; done {
			continue
		}
		if r.SpikeSeries[key], err = minutes(ctx, db, from, to,
			"organization = $3 AND environment = $4 AND apiproxy = $5", s.Proxy.Organization, s.Proxy.Environment, s.Proxy.APIProxy); err != nil {
			return nil, err
		}
	}
	r.check()
	return r, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// minutes reads per-minute totals and merged latency percentiles from
// apigee.api_calls_1m, optionally filtered.
func minutes(ctx context.Context, db querier, from, to time.Time, filter string, args ...any) ([]MinuteRow, error) {
	where := "bucket_start >= $1 AND bucket_start < $2"
	if filter != "" {
		where += " AND " + filter
	}
	rows, err := db.Query(ctx, `
		WITH m AS (
			SELECT bucket_start, sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
			       apigee.latency_hist_merge(total_ms_hist) AS h
			FROM apigee.api_calls_1m WHERE `+where+` GROUP BY 1)
		SELECT bucket_start, calls, errors,
		       coalesce(apigee.latency_hist_quantile(h, 0.50), 'NaN'),
		       coalesce(apigee.latency_hist_quantile(h, 0.95), 'NaN'),
		       coalesce(apigee.latency_hist_quantile(h, 0.99), 'NaN')
		FROM m ORDER BY 1`, append([]any{from, to}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("report: minutes: %w", err)
	}
	var out []MinuteRow
	var m MinuteRow
	if _, err := pgx.ForEachRow(rows, []any{&m.Minute, &m.Calls, &m.Errors, &m.P50, &m.P95, &m.P99}, func() error {
		out = append(out, m)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("report: minutes: %w", err)
	}
	return out, nil
}

// check runs the report's assertions.
func (r *Report) check() {
	add := func(ok bool, name, format string, args ...any) {
		r.Checks = append(r.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	s := r.Sim
	add(s.Failed == 0 && s.Published == r.Stored+r.Rejected+s.Duplicates, "published = stored + rejected + publisher retries",
		"%d = %d + %d + %d (%d publishes failed)", s.Published, r.Stored, r.Rejected, s.Duplicates, s.Failed)

	var mismatched []string
	seen := map[simulator.Proxy]bool{}
	for _, p := range r.Proxies {
		seen[p.Proxy] = true
		if p.Calls != p.Published {
			mismatched = append(mismatched, fmt.Sprintf("%s stored %d of %d", p.Proxy, p.Calls, p.Published))
		}
	}
	for px, t := range s.PerProxy {
		if !seen[px] && t.Calls > 0 {
			mismatched = append(mismatched, fmt.Sprintf("%s stored 0 of %d", px, t.Calls))
		}
	}
	sort.Strings(mismatched)
	add(len(mismatched) == 0, "every proxy's calls stored exactly once", "%d proxies; %s", len(r.Proxies), orNone(mismatched))

	var wrong []string
	got := map[string]int64{}
	for _, rj := range r.Rejects {
		got[rj.Reason] += rj.Count
	}
	for reason, n := range s.MalformedByReason {
		if got[reason] != n {
			wrong = append(wrong, fmt.Sprintf("%s: %d quarantined, %d sent", reason, got[reason], n))
		}
		delete(got, reason)
	}
	for reason, n := range got {
		wrong = append(wrong, fmt.Sprintf("%s: %d quarantined, none sent", reason, n))
	}
	sort.Strings(wrong)
	add(len(wrong) == 0, "every malformed message quarantined with its reason", "%d rejects; %s", r.Rejected, orNone(wrong))

	add(r.Duplicates >= s.Duplicates && r.Inserted == r.Stored, "duplicates absorbed",
		"%d publisher retries sent, %d duplicate rows absorbed, %d rows inserted", s.Duplicates, r.Duplicates, r.Inserted)

	for _, sp := range r.Spikes {
		add(len(sp.Found) > 0, "injected spike found: "+sp.Spike.String(), "%d anomalous minutes flagged", len(sp.Found))
	}

	mid := len(r.Rotations) >= 2 && r.Rotations[1].Summary.Status == "rotated"
	add(mid && r.Failed == 0 && r.Relay.DeadLettered == 0, "rotation mid-run with 0 failed deliveries",
		"%d rotations; %d failed delivery attempts (%v); %d dead-lettered", len(r.Rotations), r.Failed, r.Statuses, r.Relay.DeadLettered)

	add(len(r.RollupErrs) == 0, "rollup runs succeeded", "%d runs; %s", len(r.RollupRuns), orNone(r.RollupErrs))

	if pv := r.Privacy; pv.Policy != "" {
		add(pv.ClearRows == 0 && pv.ClearRejects == 0 && pv.ClearLogLines == 0, "no simulated address or email in clear",
			"INGEST_PRIVACY=%s; %d rows not as the policy stores them, %d quarantined rows and %d log lines holding one",
			pv.Policy, pv.ClearRows, pv.ClearRejects, pv.ClearLogLines)
	}
}

// writePrivacy shows the personal columns as stored.
func (r *Report) writePrivacy(w io.Writer) {
	pv := r.Privacy
	if pv.Policy == "" {
		fmt.Fprintln(w, "\nPersonal data: stored in clear (INGEST_PRIVACY is not set)")
	} else {
		fmt.Fprintf(w, "\nPersonal data as stored (INGEST_PRIVACY=%s): the most frequent client_ip, developer_email\n", pv.Policy)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  client_ip\tdeveloper_email\ttenant\tcalls")
	for _, p := range pv.Sample {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", orDash(p.ClientIP), orDash(p.DeveloperEmail), p.Tenant, p.Calls)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no mismatch"
	}
	if len(s) > 5 {
		s = append(s[:5:5], fmt.Sprintf("… %d more", len(s)-5))
	}
	return strings.Join(s, "; ")
}

// write prints the report for the terminal.
func (r *Report) write(w io.Writer) {
	fmt.Fprintf(w, "\n════ apigee-timescale demo: run %s ════\n", r.RunID)
	fmt.Fprintf(w, "%d records published in %s (%.0f/s on average) covering event time %s–%s UTC; total run %s\n\n",
		r.Sim.Published, r.Duration, float64(r.Sim.Published)/r.Duration.Seconds(),
		r.From.Format("15:04"), r.To.Format("15:04"), r.Elapsed.Round(100*time.Millisecond))

	fmt.Fprintln(w, "Per API proxy (stored rows; errors: is_error or status ≥ 500; latency: total_response_time, exact percentiles)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "proxy\tcalls\terrors\tp50 ms\tp95 ms\tp99 ms\ttenants\t")
	for _, p := range r.Proxies {
		fmt.Fprintf(tw, "%s\t%d\t%.1f%%\t%.0f\t%.0f\t%.0f\t%d\t\n", p.Proxy, p.Calls, 100*p.ErrorRate(), p.P50, p.P95, p.P99, p.Tenants)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nAnomalies recorded by rollup in the window: %d (* = an injected spike)\n", len(r.Anomalies))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\tminute\tproxy\ttenant\tmetric\tobserved\tbaseline\tscore\tcalls")
	for _, a := range r.Anomalies {
		mark := ""
		if a.Injected {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%d\n", mark, a.Minute.Format("15:04"), a.Proxy, a.Tenant, a.Metric,
			metric(a.Metric, a.Observed), metric(a.Metric, a.Baseline), a.Score, a.Calls)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nRejects by reason (quarantined in apigee.ingest_rejects): %d\n", r.Rejected)
	for _, rj := range r.Rejects {
		field := rj.Field
		if field == "" {
			field = "-"
		}
		fmt.Fprintf(w, "  %-16s %-14s %d\n", rj.Reason, field, rj.Count)
	}
	r.writePrivacy(w)
	fmt.Fprintf(w, "\nDuplicates: %d records published twice (publisher retries, new Pub/Sub message IDs); %d duplicate rows absorbed by the (message_id, received_at) key in %d batches\n",
		r.Sim.Duplicates, r.Duplicates, r.Batches)
	fmt.Fprintf(w, "Deliveries: %d push requests, %d acknowledged, %d failed, %d retried, %d dead-lettered; statuses %v\n",
		r.Relay.Delivered, r.Relay.Acked, r.Failed, r.Relay.Retried, r.Relay.DeadLettered, r.Statuses)
	for i, rot := range r.Rotations {
		what := "bootstrap"
		if i > 0 {
			what = "mid-run"
		}
		fmt.Fprintf(w, "Rotation (%s, %s): %s re-passworded → %s; failed deliveries before it %d, after the run %d\n",
			what, rot.At.Format("15:04:05"), rot.Summary.RotatedLogin, rot.Summary.NewVersion, rot.FailedBefore, r.Failed)
	}
	var refreshed, found int
	for _, run := range r.RollupRuns {
		refreshed += run.MinutesRefreshed
		found += run.AnomaliesFound
	}
	fmt.Fprintf(w, "Rollup: %d scheduled runs, %d minutes refreshed, %d anomalies found\n", len(r.RollupRuns), refreshed, found)

	fmt.Fprintln(w, "\nChecks")
	for _, c := range r.Checks {
		mark := "✓"
		if !c.OK {
			mark = "✗"
		}
		fmt.Fprintf(w, "  %s %s — %s\n", mark, c.Name, c.Detail)
	}
	if r.ok() {
		fmt.Fprintln(w, "\nAll checks passed.")
	} else {
		fmt.Fprintln(w, "\nSOME CHECKS FAILED.")
	}
}

func metric(name string, v float64) string {
	if name == simulator.MetricErrorRate {
		return fmt.Sprintf("%.1f%%", 100*v)
	}
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.0f ms", v)
}
