package rollup

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Metric names stored in apigee.anomalies.metric.
const (
	MetricErrorRate  = "error_rate"
	MetricP95Latency = "p95_latency_ms"
)

// ProxyKey identifies the series anomalies are judged on.
type ProxyKey struct {
	Tenant       string `json:"tenant"`
	Organization string `json:"organization"`
	Environment  string `json:"environment"`
	APIProxy     string `json:"apiproxy"`
}

// Point is one proxy-minute of the series: calls, errors and the merged
// histogram of total latency.
type Point struct {
	Minute  time.Time
	Calls   int64
	Errors  int64
	Latency Hist
}

// Hist is apigee.latency_hist in Go: sorted bins and their counts.
type Hist struct {
	Bins   []int32
	Counts []int64
}

// The histogram's bins, as in migration 00010: bin ceil(log_γ(v)) with
// γ = (1+α)/(1−α), α = 0.01; zero has its own bin, below every other.
var (
	gamma   = 1.01 / 0.99
	lnGamma = math.Log(gamma)
)

const zeroBin = math.MinInt32

// LatencyBin returns the bin of a latency, as apigee.latency_hist_bin.
func LatencyBin(v float64) int32 {
	if v <= 0 {
		return zeroBin
	}
	return int32(math.Ceil(math.Log(v) / lnGamma))
}

// binValue is a bin's representative value, as apigee.latency_hist_value.
func binValue(b int32) float64 {
	if b == zeroBin {
		return 0
	}
	return 2 * math.Pow(gamma, float64(b)) / (gamma + 1)
}

// Total is the number of values counted.
func (h Hist) Total() int64 {
	var n int64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Quantile estimates percentile_cont(q) exactly as
// apigee.latency_hist_quantile does; NaN when empty.
func (h Hist) Quantile(q float64) float64 {
	n := h.Total()
	if n == 0 || len(h.Bins) != len(h.Counts) {
		return math.NaN()
	}
	r := q * float64(n-1)
	lo, hi := int64(math.Floor(r)), int64(math.Ceil(r))
	var cum int64
	vlo := math.NaN()
	for i, b := range h.Bins {
		cum += h.Counts[i]
		if math.IsNaN(vlo) && cum > lo {
			vlo = binValue(b)
		}
		if cum > hi {
			return vlo + (r-float64(lo))*(binValue(b)-vlo)
		}
	}
	return vlo
}

// CountAbove is the number of values in bins above bin.
func (h Hist) CountAbove(bin int32) int64 {
	var n int64
	for i := len(h.Bins) - 1; i >= 0 && h.Bins[i] > bin; i-- {
		n += h.Counts[i]
	}
	return n
}

// Anomaly is one flagged proxy-minute.
type Anomaly struct {
	ProxyKey
	Minute          time.Time `json:"minute"`
	Metric          string    `json:"metric"`
	Observed        float64   `json:"observed"`
	Baseline        float64   `json:"baseline"`
	Scale           float64   `json:"scale"`
	Score           float64   `json:"score"`
	Calls           int64     `json:"calls"`
	BaselineMinutes int       `json:"baseline_minutes"`
}

// Detect judges every minute of each series in [from, to) against the same
// proxy's minutes in the trailing cfg.Baseline. Only minutes with at least
// cfg.MinCalls calls are judged or used as baseline, and a minute needs
// cfg.MinBaselineMinutes baseline minutes. Only rises are flagged.
//
// Error rate: the robust z-score (x − median) / max(1.4826·MAD, binomial
// standard error at the baseline rate) must reach cfg.Z, and so must the
// z-score equivalent of the exact binomial tail P(X ≥ errors) at the
// baseline rate, which keeps small minutes (where a few errors are a large
// rate) quiet; the rate must also rise by cfg.MinErrorRateDelta. The
// reported score is the smaller of the two.
//
// p95 latency: (x − median of the baseline minutes' p95) / max(1.4826·MAD,
// 5% of the median) must reach cfg.Z, and so must the binomial tail score
// of the number of calls slower than that median, against the share of
// baseline calls slower than it. A minute's p95 rests on its few slowest
// calls, so without the count test a small minute with two slow calls
// would look like a spike. x must also be at least cfg.MinLatencyRatio ×
// the median and cfg.MinLatencyDeltaMS above it.
func Detect(series map[ProxyKey][]Point, from, to time.Time, cfg AnomalyConfig) []Anomaly {
	var out []Anomaly
	for key, pts := range series {
		pts = slices.Clone(pts)
		slices.SortFunc(pts, func(a, b Point) int { return a.Minute.Compare(b.Minute) })
		for i, p := range pts {
			if p.Minute.Before(from) || !p.Minute.Before(to) || p.Calls < cfg.MinCalls {
				continue
			}
			var rates []float64
			var baseCalls, baseErrors int64
			var timed []Point
			for j := i - 1; j >= 0 && !pts[j].Minute.Before(p.Minute.Add(-cfg.Baseline)); j-- {
				q := pts[j]
				if q.Calls < cfg.MinCalls {
					continue
				}
				rates = append(rates, float64(q.Errors)/float64(q.Calls))
				baseCalls += q.Calls
				baseErrors += q.Errors
				if q.Latency.Total() > 0 {
					timed = append(timed, q)
				}
			}
			if len(rates) >= cfg.MinBaselineMinutes {
				if a, ok := judgeErrors(p, rates, baseCalls, baseErrors, cfg); ok {
					a.ProxyKey = key
					out = append(out, a)
				}
			}
			if len(timed) >= cfg.MinBaselineMinutes && p.Latency.Total() > 0 {
				if a, ok := judgeLatency(p, timed, cfg); ok {
					a.ProxyKey = key
					out = append(out, a)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Anomaly) int {
		return cmp.Or(a.Minute.Compare(b.Minute), cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.APIProxy, b.APIProxy),
			cmp.Compare(a.Environment, b.Environment), cmp.Compare(a.Organization, b.Organization), cmp.Compare(a.Metric, b.Metric))
	})
	return out
}

func judgeErrors(p Point, rates []float64, baseCalls, baseErrors int64, cfg AnomalyConfig) (Anomaly, bool) {
	x := float64(p.Errors) / float64(p.Calls)
	med, mad := medianMAD(rates)
	if x-med < cfg.MinErrorRateDelta {
		return Anomaly{}, false
	}
	// The baseline rate for the binomial checks never drops to zero: a
	// proxy that never failed still has some small chance to.
	p0 := math.Max(med, float64(baseErrors+1)/float64(baseCalls+2))
	scale := math.Max(1.4826*mad, math.Sqrt(p0*(1-p0)/float64(p.Calls)))
	robust := (x - med) / scale
	tail := binomialZ(p.Errors, p.Calls, p0)
	score := math.Min(robust, tail)
	if score < cfg.Z {
		return Anomaly{}, false
	}
	return Anomaly{Minute: p.Minute, Metric: MetricErrorRate, Observed: x, Baseline: med, Scale: scale,
		Score: score, Calls: p.Calls, BaselineMinutes: len(rates)}, true
}

func judgeLatency(p Point, base []Point, cfg AnomalyConfig) (Anomaly, bool) {
	p95s := make([]float64, len(base))
	for i, q := range base {
		p95s[i] = q.Latency.Quantile(0.95)
	}
	med, mad := medianMAD(p95s)
	x := p.Latency.Quantile(0.95)
	if x < med*cfg.MinLatencyRatio || x-med < cfg.MinLatencyDeltaMS {
		return Anomaly{}, false
	}
	scale := math.Max(1.4826*mad, 0.05*med)
	if scale <= 0 {
		return Anomaly{}, false
	}
	robust := (x - med) / scale
	limit := LatencyBin(med)
	var slow, timed int64
	for _, q := range base {
		slow += q.Latency.CountAbove(limit)
		timed += q.Latency.Total()
	}
	p0 := float64(slow+1) / float64(timed+2)
	tail := binomialZ(p.Latency.CountAbove(limit), p.Latency.Total(), p0)
	score := math.Min(robust, tail)
	if score < cfg.Z {
		return Anomaly{}, false
	}
	return Anomaly{Minute: p.Minute, Metric: MetricP95Latency, Observed: x, Baseline: med, Scale: scale,
		Score: score, Calls: p.Calls, BaselineMinutes: len(base)}, true
}

// medianMAD returns the median of xs and the median absolute deviation
// from it.
func medianMAD(xs []float64) (median, mad float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	median = middle(s)
	for i, v := range s {
		s[i] = math.Abs(v - median)
	}
	slices.Sort(s)
	return median, middle(s)
}

func middle(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// binomialZ converts the upper tail P(X ≥ k) of Binomial(n, p) into the
// standard normal score with the same upper tail, capped at 40.
func binomialZ(k, n int64, p float64) float64 {
	if k <= 0 {
		return 0
	}
	if p <= 0 {
		return 40
	}
	if p >= 1 {
		return 0
	}
	lp, lq := math.Log(p), math.Log1p(-p)
	lgn, _ := math.Lgamma(float64(n + 1))
	var tail float64
	for i := k; i <= n; i++ {
		a, _ := math.Lgamma(float64(i + 1))
		b, _ := math.Lgamma(float64(n - i + 1))
		term := math.Exp(lgn - a - b + float64(i)*lp + float64(n-i)*lq)
		tail += term
		if term < tail*1e-12 {
			break
		}
	}
	if tail >= 1 {
		return 0
	}
	if tail <= 0 {
		return 40
	}
	return math.Min(40, math.Sqrt2*math.Erfcinv(2*tail))
}

// anomalies judges the minutes not judged yet, up to ANOMALY_SETTLE ago and
// never past a minute whose rollup is still pending, records new anomalies
// and publishes the alerts not sent yet.
func (r *Runner) anomalies(ctx context.Context, conn *pgx.Conn, s *Summary) error {
	cfg := r.cfg.Anomaly
	var evaluated, pending *time.Time
	err := conn.QueryRow(ctx, `SELECT (SELECT anomalies_evaluated_until FROM apigee.rollup_state),
		(SELECT min(bucket_start) FROM apigee.rollup_invalidations)`).Scan(&evaluated, &pending)
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	to := r.now().Add(-cfg.Settle).UTC().Truncate(time.Minute)
	if pending != nil && pending.Before(to) {
		to = pending.UTC().Truncate(time.Minute)
	}
	from := to.Add(-cfg.Lookback)
	if evaluated != nil && evaluated.After(from) {
		from = *evaluated
	}
	if from.Before(to) {
		series, err := loadSeries(ctx, conn, from.Add(-cfg.Baseline), to)
		if err != nil {
			return err
		}
		found := Detect(series, from, to, cfg)
		n, err := r.insertAnomalies(ctx, conn, found, to)
		if err != nil {
			return err
		}
		s.AnomaliesFound += n
	}
	if r.pub == nil {
		return nil
	}
	sent, err := r.publishPending(ctx, conn)
	s.AlertsPublished += sent
	return err
}

const seriesSQL = `
WITH m AS MATERIALIZED (
	SELECT bucket_start, tenant, organization, environment, apiproxy, calls, errors, total_ms_hist
	FROM apigee.api_calls_1m
	WHERE bucket_start >= $1 AND bucket_start < $2
), b AS (
	SELECT tenant, organization, environment, apiproxy, bucket_start,
		sum(calls)::bigint AS calls, sum(errors)::bigint AS errors
	FROM m
	GROUP BY 1, 2, 3, 4, 5
), h AS (
	SELECT tenant, organization, environment, apiproxy, bucket_start, u.bin, sum(u.n)::bigint AS n
	FROM m CROSS JOIN LATERAL unnest((m.total_ms_hist).bins, (m.total_ms_hist).counts) AS u(bin, n)
	GROUP BY 1, 2, 3, 4, 5, 6
), q AS (
	SELECT tenant, organization, environment, apiproxy, bucket_start,
		array_agg(bin ORDER BY bin) AS bins, array_agg(n ORDER BY bin) AS counts
	FROM h
	GROUP BY 1, 2, 3, 4, 5
)
SELECT b.tenant, b.organization, b.environment, b.apiproxy, b.bucket_start, b.calls, b.errors,
	coalesce(q.bins, '{}'), coalesce(q.counts, '{}')
FROM b LEFT JOIN q USING (tenant, organization, environment, apiproxy, bucket_start)`

// loadSeries reads per-proxy minute series from the minute rollups,
// merging the histograms of each proxy-minute's rows.
func loadSeries(ctx context.Context, conn *pgx.Conn, from, to time.Time) (map[ProxyKey][]Point, error) {
	rows, err := conn.Query(ctx, seriesSQL, from, to)
	if err != nil {
		return nil, fmt.Errorf("load series: %w", err)
	}
	series := map[ProxyKey][]Point{}
	var k ProxyKey
	var p Point
	_, err = pgx.ForEachRow(rows, []any{&k.Tenant, &k.Organization, &k.Environment, &k.APIProxy, &p.Minute, &p.Calls, &p.Errors,
		&p.Latency.Bins, &p.Latency.Counts}, func() error {
		series[k] = append(series[k], p)
		p.Latency = Hist{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load series: %w", err)
	}
	return series, nil
}

// insertAnomalies records found anomalies (a proxy-minute-metric already
// recorded is left alone) and moves the evaluation watermark to `until`,
// in one transaction. It returns how many anomalies were new.
func (r *Runner) insertAnomalies(ctx context.Context, conn *pgx.Conn, found []Anomaly, until time.Time) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	state := "none"
	if r.pub != nil {
		state = "pending"
	}
	var n int64
	if len(found) > 0 {
		cols := make([][]any, 12)
		for _, a := range found {
			for i, v := range []any{a.Minute, a.Tenant, a.Organization, a.Environment, a.APIProxy, a.Metric,
				a.Observed, a.Baseline, a.Scale, a.Score, a.Calls, a.BaselineMinutes} {
				cols[i] = append(cols[i], v)
			}
		}
		err := tx.QueryRow(ctx, `
			WITH ins AS (
				INSERT INTO apigee.anomalies (bucket_start, tenant, organization, environment, apiproxy, metric,
					observed, baseline, scale, score, calls, baseline_minutes, alert_state)
				SELECT u.*, $13 FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
					$7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::bigint[], $12::integer[]) AS u
				ON CONFLICT ON CONSTRAINT anomalies_key DO NOTHING
				RETURNING 1)
			SELECT count(*) FROM ins`,
			cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8], cols[9], cols[10], cols[11], state).Scan(&n)
		if err != nil {
			return 0, fmt.Errorf("insert anomalies: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE apigee.rollup_state
		SET anomalies_evaluated_until = greatest(coalesce(anomalies_evaluated_until, '-infinity'), $1)`, until); err != nil {
		return 0, fmt.Errorf("advance watermark: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit anomalies: %w", err)
	}
	return int(n), nil
}

// Alert is the JSON body of an alert message.
type Alert struct {
	ID int64 `json:"id"`
	Anomaly
	DetectedAt time.Time `json:"detected_at"`
}

// publishPending publishes the alerts still pending, oldest first, and
// marks those the topic accepted. An alert whose publish failed stays
// pending for the next run, so each is sent once unless marking it sent
// fails after the publish (then it is sent again: at least once).
func (r *Runner) publishPending(ctx context.Context, conn *pgx.Conn) (int, error) {
	sent := 0
	for {
		rows, err := conn.Query(ctx, `
			SELECT id, bucket_start, tenant, organization, environment, apiproxy, metric,
				observed, baseline, scale, score, calls, baseline_minutes, detected_at
			FROM apigee.anomalies WHERE alert_state = 'pending' ORDER BY id LIMIT 500`)
		if err != nil {
			return sent, fmt.Errorf("read pending alerts: %w", err)
		}
		var alerts []Alert
		var a Alert
		_, err = pgx.ForEachRow(rows, []any{&a.ID, &a.Minute, &a.Tenant, &a.Organization, &a.Environment, &a.APIProxy, &a.Metric,
			&a.Observed, &a.Baseline, &a.Scale, &a.Score, &a.Calls, &a.BaselineMinutes, &a.DetectedAt}, func() error {
			alerts = append(alerts, a)
			return nil
		})
		if err != nil {
			return sent, fmt.Errorf("read pending alerts: %w", err)
		}
		if len(alerts) == 0 {
			return sent, nil
		}
		msgs := make([]Message, len(alerts))
		for i, a := range alerts {
			data, err := json.Marshal(a)
			if err != nil {
				return sent, fmt.Errorf("encode alert: %w", err)
			}
			msgs[i] = Message{Data: data, Attributes: map[string]string{
				"anomaly_id":  strconv.FormatInt(a.ID, 10),
				"tenant":      a.Tenant,
				"environment": a.Environment,
				"apiproxy":    a.APIProxy,
				"metric":      a.Metric,
			}}
		}
		errs := r.pub.Publish(ctx, msgs)
		var ok []int64
		var firstErr error
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			ok = append(ok, alerts[i].ID)
		}
		if len(ok) > 0 {
			ctx := context.WithoutCancel(ctx)
			if _, err := conn.Exec(ctx, "UPDATE apigee.anomalies SET alert_state = 'sent', alerted_at = now() WHERE id = ANY($1)", ok); err != nil {
				return sent, fmt.Errorf("mark alerts sent: %w", err)
			}
			sent += len(ok)
		}
		if failed > 0 {
			return sent, fmt.Errorf("publish alerts: %d of %d failed: %w", failed, len(alerts), firstErr)
		}
	}
}
