package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// readResult is one question's time from the rollups and from raw rows.
type readResult struct {
	name, window string
	rollup, raw  time.Duration
}

func (r readResult) ratio() float64 { return r.raw.Seconds() / r.rollup.Seconds() }

// rawFilter is the dashboard's variable filter on raw rows.
const rawFilter = `received_at BETWEEN $__from AND $__to
	AND tenant IN (${tenant:sqlstring}) AND environment IN (${environment:sqlstring}) AND apiproxy IN (${apiproxy:sqlstring})`

// rawAppFilter is the filter of the panel of developer apps, which counts
// an app's calls to every proxy (the per-app rollups have no proxy).
const rawAppFilter = `received_at BETWEEN $__from AND $__to
	AND tenant IN (${tenant:sqlstring}) AND environment IN (${environment:sqlstring})`

// rawQuestions answers each dashboard panel's question (keyed by title)
// from the raw rows with percentile_cont, as someone without rollups
// would; the README's p95 per proxy per minute has both forms here.
var rawQuestions = map[string]string{
	"Calls":       `SELECT count(*) AS calls FROM apigee.api_calls WHERE ` + rawFilter,
	"Error rate":  `SELECT (count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500))::float8 / nullif(count(*), 0) FROM apigee.api_calls WHERE ` + rawFilter,
	"p95 latency": `SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY total_response_time) FROM apigee.api_calls WHERE ` + rawFilter,
	"Traffic by proxy": `SELECT $__bucket AS time, apiproxy, count(*)::float8 / ($__interval_ms / 1000.0)
		FROM apigee.api_calls WHERE ` + rawFilter + ` GROUP BY 1, 2 ORDER BY 1, 2`,
	"Error rate by proxy": `SELECT $__bucket AS time, apiproxy,
		(count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500))::float8 / count(*)
		FROM apigee.api_calls WHERE ` + rawFilter + ` GROUP BY 1, 2 ORDER BY 1, 2`,
	"Responses by status class": `SELECT $__bucket AS time, (response_status_code / 100)::text || 'xx', count(*)::float8 / ($__interval_ms / 1000.0)
		FROM apigee.api_calls WHERE ` + rawFilter + ` GROUP BY 1, 2 ORDER BY 1, 2`,
	"p95 latency by proxy": `SELECT $__bucket AS time, apiproxy, percentile_cont(0.95) WITHIN GROUP (ORDER BY total_response_time)
		FROM apigee.api_calls WHERE ` + rawFilter + ` GROUP BY 1, 2 ORDER BY 1, 2`,
	"Latency by proxy": `SELECT apiproxy, count(*) AS calls,
		percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_response_time),
		max(total_response_time), avg(total_response_time),
		percentile_cont(0.95) WITHIN GROUP (ORDER BY target_response_time)
		FROM apigee.api_calls WHERE ` + rawFilter + ` GROUP BY 1 ORDER BY 2 DESC`,
	"Top developer apps": `SELECT coalesce(developer_app, '(none)'), count(*) AS calls,
		count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500),
		(count(*) FILTER (WHERE coalesce(is_error, false) OR response_status_code >= 500))::float8 / count(*),
		percentile_cont(0.95) WITHIN GROUP (ORDER BY total_response_time)
		FROM apigee.api_calls WHERE ` + rawAppFilter + ` GROUP BY 1 ORDER BY 2 DESC LIMIT 10`,
	readmeQuestion: `SELECT date_bin('1 minute', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'), tenant, organization, environment, apiproxy,
		percentile_cont(0.95) WITHIN GROUP (ORDER BY total_response_time)
		FROM apigee.api_calls WHERE received_at >= $__from AND received_at < $__to GROUP BY 1, 2, 3, 4, 5`,
}

const readmeQuestion = "README: p95 per proxy per minute"

// readmeRollupSQL is the README's example query (the view).
const readmeRollupSQL = `SELECT bucket_start, tenant, organization, environment, apiproxy, total_ms_p95
	FROM apigee.proxy_latency_1m WHERE bucket_start >= $__from AND bucket_start < $__to`

// benchWindows are the dashboard time ranges timed, with the interval
// Grafana would ask for: under an hour reads the minute rollups.
var benchWindows = []struct {
	name     string
	span     time.Duration
	interval time.Duration
}{
	{"1h", time.Hour, time.Minute},
	{"24h", 24 * time.Hour, time.Minute},
	{"24h@1h", 24 * time.Hour, time.Hour},
}

// benchReads times every dashboard panel reading rollups and the README's
// question, each window ending at the data's end, from rollups and from
// raw rows, as a reader granted every tenant would see them.
func benchReads(b *testing.B, db *testkit.DB, end time.Time) []readResult {
	b.Helper()
	panels := dashboardPanels(b)
	vars := map[string][]string{}
	for _, v := range []string{"tenant", "environment", "apiproxy"} {
		rows, err := db.Admin.Query(context.Background(), "SELECT DISTINCT "+v+" FROM apigee.api_calls ORDER BY 1")
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				b.Fatal(err)
			}
			vars[v] = append(vars[v], s)
		}
		rows.Close()
	}
	var out []readResult
	for _, w := range benchWindows {
		e := benchExpansion{from: end.Add(-w.span), to: end, interval: w.interval, vars: vars}
		for _, name := range append(panelOrder(), readmeQuestion) {
			if name == readmeQuestion && w.interval != time.Minute {
				continue
			}
			rollupSQL := readmeRollupSQL
			if name != readmeQuestion {
				rollupSQL = panels[name]
			}
			out = append(out, readResult{name: name, window: w.name,
				rollup: timeQuery(b, db, e.expand(rollupSQL)), raw: timeQuery(b, db, e.expand(rawQuestions[name]))})
		}
	}
	return out
}

// panelOrder is the dashboard panels that read rollups, in display order.
func panelOrder() []string {
	return []string{"Calls", "Error rate", "p95 latency", "Traffic by proxy", "Error rate by proxy",
		"Responses by status class", "p95 latency by proxy", "Latency by proxy", "Top developer apps"}
}

// timeQuery runs sql, reading every row, and returns the best of two runs
// (the first may pay for cold caches and planning).
func timeQuery(b *testing.B, db *testkit.DB, sql string) time.Duration {
	b.Helper()
	best := time.Duration(1<<63 - 1)
	for range 2 {
		t0 := time.Now()
		rows, err := db.Admin.Query(context.Background(), sql)
		if err != nil {
			b.Fatalf("%v\n%s", err, sql)
		}
		for rows.Next() {
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			b.Fatalf("%v\n%s", err, sql)
		}
		best = min(best, time.Since(t0))
	}
	return best
}

// dashboardPanels returns each panel's query by title from the dashboard
// this repository ships.
func dashboardPanels(b *testing.B) map[string]string {
	b.Helper()
	data, err := os.ReadFile("../../deploy/grafana/apigee-timescale.json")
	if err != nil {
		b.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			RawSQL string `json:"rawSql"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		b.Fatal(err)
	}
	out := map[string]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if len(p.Targets) > 0 {
				out[p.Title] = p.Targets[0].RawSQL
			}
			var sub []panel
			for _, raw := range p.Panels {
				var q panel
				if err := json.Unmarshal(raw, &q); err != nil {
					b.Fatal(err)
				}
				sub = append(sub, q)
			}
			walk(sub)
		}
	}
	walk(d.Panels)
	for _, name := range panelOrder() {
		if out[name] == "" {
			b.Fatalf("dashboard has no panel %q", name)
		}
	}
	return out
}

// benchExpansion does what Grafana's PostgreSQL data source does to the
// macros the dashboard uses (deploy/grafana/grafana_test.go checks the
// full set); $__from, $__to and $__bucket serve the raw questions.
type benchExpansion struct {
	from, to time.Time
	interval time.Duration
	vars     map[string][]string
}

func (e benchExpansion) expand(sql string) string {
	lit := func(t time.Time) string { return "'" + t.Format(time.RFC3339) + "'::timestamptz" }
	secs := strconv.Itoa(int(e.interval / time.Second))
	r := strings.NewReplacer(
		"$__interval_ms", strconv.FormatInt(e.interval.Milliseconds(), 10),
		"$__timeFrom()", lit(e.from), "$__timeTo()", lit(e.to),
		"$__from", lit(e.from), "$__to", lit(e.to),
		"$__bucket", "floor(extract(epoch from received_at)/"+secs+")*"+secs,
	)
	sql = r.Replace(sql)
	for name, vals := range e.vars {
		q := make([]string, len(vals))
		for i, v := range vals {
			q[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
		}
		sql = strings.ReplaceAll(sql, "${"+name+":sqlstring}", strings.Join(q, ","))
	}
	for _, col := range []string{"bucket_start", "received_at"} {
		sql = strings.ReplaceAll(sql, "$__timeFilter("+col+")", fmt.Sprintf("%s BETWEEN %s AND %s", col, lit(e.from), lit(e.to)))
		sql = strings.ReplaceAll(sql, "$__timeGroup("+col+", $__interval)", fmt.Sprintf("floor(extract(epoch from %s)/%s)*%s", col, secs, secs))
		sql = strings.ReplaceAll(sql, "$__timeGroupAlias("+col+", $__interval)",
			fmt.Sprintf(`floor(extract(epoch from %s)/%s)*%s AS "time"`, col, secs, secs))
	}
	return sql
}
