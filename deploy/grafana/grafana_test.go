package grafana_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"apigee-timescale/deploy/local/testkit"
)

const dashboardFile = "apigee-timescale.json"

// wantColumns is the contract between each query and its panel: the columns,
// in order. Every panel and annotation of the dashboard must be listed here,
// and every entry must exist in the dashboard.
var wantColumns = map[string][]string{
	"Calls":                       {"calls"},
	"Error rate":                  {"error_rate"},
	"p95 latency":                 {"p95_ms"},
	"Rejected records":            {"rejects"},
	"Traffic by proxy":            {"time", "metric", "value"},
	"Error rate by proxy":         {"time", "metric", "value"},
	"Responses by status class":   {"time", "metric", "value"},
	"p95 latency by proxy":        {"time", "metric", "value"},
	"Latency by proxy":            {"apiproxy", "calls", "p50_ms", "p95_ms", "p99_ms", "max_ms", "avg_ms", "target_p95_ms"},
	"Top developer apps":          {"developer_app", "calls", "errors", "error_rate", "p95_ms"},
	"Rejects by reason":           {"time", "metric", "value"},
	"Rejects by reason and field": {"reason", "field", "rejects", "last_seen", "latest_detail"},
	"Anomalies":                   {"time", "environment", "apiproxy", "metric", "observed", "baseline", "score", "calls", "alert_state"},
	"annotation: Anomalies":       {"time", "text", "tags"},
	"variable: tenant":            {"tenant"},
	"variable: environment":       {"environment"},
	"variable: apiproxy":          {"apiproxy"},
}

// ---------------------------------------------------------------------------
// The dashboard.

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []annotation `json:"list"`
	} `json:"annotations"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Interval   string      `json:"interval"`
	Targets    []target    `json:"targets"`
	Panels     []panel     `json:"panels"` // of a collapsed row
}

type target struct {
	Datasource *datasource `json:"datasource"`
	Format     string      `json:"format"`
	RawQuery   bool        `json:"rawQuery"`
	RawSQL     string      `json:"rawSql"`
}

type variable struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	Query      any         `json:"query"`
	Datasource *datasource `json:"datasource"`
	Multi      bool        `json:"multi"`
	IncludeAll bool        `json:"includeAll"`
}

type annotation struct {
	Name       string      `json:"name"`
	Datasource *datasource `json:"datasource"`
	Target     *target     `json:"target"`
}

// query is one SQL statement of the dashboard and what it must return.
type query struct {
	name   string // panel title, "annotation: X" or "variable: X"
	sql    string
	format string // time_series or table
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// queries extracts every SQL statement: panel targets, annotations and
// query variables.
func (d dashboard) queries(t *testing.T) []query {
	t.Helper()
	var qs []query
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			qs = append(qs, query{p.Title, tg.RawSQL, tg.Format})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Target != nil {
			qs = append(qs, query{"annotation: " + a.Name, a.Target.RawSQL, a.Target.Format})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			s, ok := v.Query.(string)
			if !ok {
				t.Fatalf("variable %s: query is not a string", v.Name)
			}
			qs = append(qs, query{"variable: " + v.Name, s, "table"})
		}
	}
	return qs
}

const pgDatasource = "grafana-postgresql-datasource"

func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	ids := map[int]bool{}
	for _, p := range allPanels(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != pgDatasource || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) != 1 {
			t.Errorf("panel %q has %d queries, want 1", p.Title, len(p.Targets))
			continue
		}
		tg := p.Targets[0]
		if !tg.RawQuery || strings.TrimSpace(tg.RawSQL) == "" {
			t.Errorf("panel %q: not a raw SQL query", p.Title)
		}
		wantFormat := "table"
		if p.Type == "timeseries" {
			wantFormat = "time_series"
		}
		if tg.Format != wantFormat {
			t.Errorf("panel %q (%s): format %q, want %q", p.Title, p.Type, tg.Format, wantFormat)
		}
		// Rollups have one row per minute: a finer interval only makes gaps.
		if p.Interval != "1m" {
			t.Errorf("panel %q: min interval %q, want 1m", p.Title, p.Interval)
		}
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if v.Type == "query" && (!v.Multi || !v.IncludeAll) {
			t.Errorf("variable %s must be multi-value with All", v.Name)
		}
	}
	if !slices.Equal(vars, []string{"datasource", "tenant", "environment", "apiproxy"}) {
		t.Errorf("variables %q", vars)
	}
	seen := map[string]bool{}
	for _, q := range d.queries(t) {
		if seen[q.name] {
			t.Errorf("two queries named %q", q.name)
		}
		seen[q.name] = true
		if _, ok := wantColumns[q.name]; !ok {
			t.Errorf("%q has no expected columns in wantColumns: add them", q.name)
		}
	}
	for name := range wantColumns {
		if !seen[name] {
			t.Errorf("wantColumns lists %q, which is not in the dashboard", name)
		}
	}
}

// ---------------------------------------------------------------------------
// Grafana's interpolation, as the PostgreSQL data source does it (grafana
// pkg/tsdb/grafana-postgresql-datasource/macros.go and the SQL engine's
// Interpolate): template variables first (in the browser), then
// $__interval_ms and $__interval, then the $__name(args) macros.

type expansion struct {
	from, to    time.Time
	interval    time.Duration
	timescaledb bool // the data source's TimescaleDB switch
	vars        map[string][]string
}

var (
	varRef   = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::([A-Za-z]+))?\}|\$([A-Za-z][A-Za-z0-9_]*)`)
	macroRef = regexp.MustCompile(`\$([_a-zA-Z0-9]+)\(([^)]*)\)`)
)

// intervalText is how Grafana prints an interval: 1m, 5m, 1h, 1d.
func intervalText(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d%time.Hour == 0:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	case d%time.Minute == 0:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	}
	return strconv.Itoa(int(d/time.Second)) + "s"
}

func parseInterval(s string) (time.Duration, error) {
	s = strings.Trim(s, `'`)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		return time.Duration(days) * 24 * time.Hour, err
	}
	return time.ParseDuration(s)
}

func sqlString(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
	}
	return strings.Join(q, ",")
}

func (e expansion) expand(sql string) (string, error) {
	var errs []string
	// Template variables. Only ${name:sqlstring} is allowed for our
	// variables: the bare forms' quoting depends on Grafana's defaults.
	sql = varRef.ReplaceAllStringFunc(sql, func(m string) string {
		sm := varRef.FindStringSubmatch(m)
		name, format := sm[1], sm[2]
		if name == "" {
			name = sm[3]
		}
		if strings.HasPrefix(name, "__") {
			return m // Grafana's own, handled below
		}
		vals, ok := e.vars[name]
		if !ok {
			errs = append(errs, "unknown variable "+m)
			return m
		}
		if format != "sqlstring" {
			errs = append(errs, m+": use ${"+name+":sqlstring}")
			return m
		}
		return sqlString(vals)
	})
	sql = strings.ReplaceAll(sql, "$__interval_ms", strconv.FormatInt(e.interval.Milliseconds(), 10))
	sql = strings.ReplaceAll(sql, "$__interval", intervalText(e.interval))
	sql = strings.ReplaceAll(sql, "$__unixEpochFrom()", strconv.FormatInt(e.from.Unix(), 10))
	sql = strings.ReplaceAll(sql, "$__unixEpochTo()", strconv.FormatInt(e.to.Unix(), 10))
	ts := func(t time.Time) string { return "'" + t.UTC().Format(time.RFC3339Nano) + "'" }
	sql = macroRef.ReplaceAllStringFunc(sql, func(m string) string {
		sm := macroRef.FindStringSubmatch(m)
		args := strings.Split(sm[2], ",")
		for i := range args {
			args[i] = strings.TrimSpace(args[i])
		}
		switch sm[1] {
		case "__timeFilter":
			return fmt.Sprintf("%s BETWEEN %s AND %s", args[0], ts(e.from), ts(e.to))
		case "__timeFrom":
			return ts(e.from)
		case "__timeTo":
			return ts(e.to)
		case "__timeGroup", "__timeGroupAlias":
			if len(args) < 2 {
				errs = append(errs, m+": needs a column and an interval")
				return m
			}
			iv, err := parseInterval(args[1])
			if err != nil {
				errs = append(errs, m+": "+err.Error())
				return m
			}
			var g string
			if e.timescaledb {
				g = fmt.Sprintf("time_bucket('%.3fs',%s)", iv.Seconds(), args[0])
			} else {
				g = fmt.Sprintf("floor(extract(epoch from %s)/%v)*%v", args[0], iv.Seconds(), iv.Seconds())
			}
			if sm[1] == "__timeGroupAlias" {
				g += ` AS "time"`
			}
			return g
		}
		errs = append(errs, "macro "+m+" is not emulated by this test")
		return m
	})
	if strings.Contains(sql, "$") {
		errs = append(errs, "unexpanded $ left in: "+sql)
	}
	if len(errs) > 0 {
		return "", fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return sql, nil
}

func TestExpand(t *testing.T) {
	from := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	e := expansion{from: from, to: from.Add(6 * time.Hour), interval: 5 * time.Minute,
		vars: map[string][]string{"tenant": {"a", "o'b"}}}
	tests := []struct{ in, want string }{
		{"$__timeFilter(received_at)", "received_at BETWEEN '2026-03-01T10:00:00Z' AND '2026-03-01T16:00:00Z'"},
		{"x > $__timeFrom() AND x < $__timeTo()", "x > '2026-03-01T10:00:00Z' AND x < '2026-03-01T16:00:00Z'"},
		{"$__timeGroupAlias(bucket_start, $__interval)", `floor(extract(epoch from bucket_start)/300)*300 AS "time"`},
		{"$__timeGroup(bucket_start, '1h')", "floor(extract(epoch from bucket_start)/3600)*3600"},
		{"$__interval_ms / $__interval", "300000 / 5m"},
		{"tenant IN (${tenant:sqlstring})", "tenant IN ('a','o''b')"},
	}
	for _, tt := range tests {
		got, err := e.expand(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	e.timescaledb = true
	if got, _ := e.expand("$__timeGroupAlias(b, 1m)"); got != `time_bucket('60.000s',b) AS "time"` {
		t.Errorf("timescaledb timeGroup: %q", got)
	}
	for _, bad := range []string{"$tenant", "${tenant}", "${nope:sqlstring}", "$__unknownMacro(x)", "$__timeGroup(x)"} {
		if _, err := e.expand(bad); err == nil {
			t.Errorf("expand(%q) accepted", bad)
		}
	}
}

// ---------------------------------------------------------------------------
// The queries against a database with data in it.

// Two tenants: the reader is granted only "acme"; everything of "globex"
// (its own proxy name, app, reject reason) must stay invisible.
const (
	granted   = "acme"
	hidden    = "globex"
	hiddenTag = "globex-secret"
)

func TestDashboardQueries(t *testing.T) {
	d := loadDashboard(t)
	qs := d.queries(t)
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Minute)
		seed(t, db, now)
		role, dsn := db.Login(t, "apigee_reader")
		if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.tenant_grants (role_name, tenant) VALUES ($1, $2)", role, granted); err != nil {
			t.Fatal(err)
		}
		conn := testkit.Connect(t, dsn)

		// What the variables offer the reader, then used as their values.
		vars := map[string][]string{}
		for _, name := range []string{"tenant", "environment", "apiproxy"} {
			sql := findQuery(t, qs, "variable: "+name).sql
			e := expansion{from: now.Add(-6 * time.Hour), to: now, interval: time.Minute, vars: vars}
			vals := runVariable(t, conn, e, sql)
			if len(vals) == 0 {
				t.Fatalf("variable %s offers nothing", name)
			}
			vars[name] = vals
		}
		if !slices.Equal(vars["tenant"], []string{granted}) {
			t.Fatalf("the tenant variable offers %q to a reader granted only %q", vars["tenant"], granted)
		}
		if len(vars["apiproxy"]) < 2 {
			t.Fatalf("apiproxy variable %q: the seed has two proxies for %s", vars["apiproxy"], granted)
		}

		scenarios := []struct {
			name     string
			span     time.Duration
			interval time.Duration
		}{
			{"6h at 1m (minute rollups)", 6 * time.Hour, time.Minute},
			{"7d at 1h (hourly rollups)", 7 * 24 * time.Hour, time.Hour},
		}
		flags := []bool{false}
		if db.Kind == testkit.TimescaleDB {
			flags = append(flags, true)
		}
		for _, sc := range scenarios {
			for _, tsFlag := range flags {
				for _, selection := range []string{"all values", "one value each"} {
					v := vars
					if selection == "one value each" {
						v = map[string][]string{}
						for k, vals := range vars {
							v[k] = vals[:1]
						}
					}
					e := expansion{from: now.Add(-sc.span), to: now.Add(time.Minute), interval: sc.interval, timescaledb: tsFlag, vars: v}
					name := fmt.Sprintf("%s, timescaledb switch %v, %s", sc.name, tsFlag, selection)
					t.Run(name, func(t *testing.T) {
						for _, q := range qs {
							if strings.HasPrefix(q.name, "variable: ") {
								continue
							}
							t.Run(q.name, func(t *testing.T) {
								rows := runQuery(t, conn, e, q)
								if rows == 0 && selection == "all values" {
									t.Errorf("no rows: the seed has data for every panel")
								}
							})
						}
					})
				}
			}
		}
	})
}

func findQuery(t *testing.T, qs []query, name string) query {
	t.Helper()
	for _, q := range qs {
		if q.name == name {
			return q
		}
	}
	t.Fatalf("no query %q", name)
	return query{}
}

func runVariable(t *testing.T, conn *pgx.Conn, e expansion, sql string) []string {
	t.Helper()
	x, err := e.expand(sql)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(context.Background(), x)
	if err != nil {
		t.Fatalf("%s\n%v", x, err)
	}
	vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s\n%v", x, err)
	}
	return vals
}

// Type OIDs Grafana accepts for a time column and for values.
var (
	timeTypes  = []uint32{pgtype.TimestamptzOID, pgtype.TimestampOID, pgtype.Float8OID, pgtype.NumericOID, pgtype.Int8OID}
	valueTypes = []uint32{pgtype.Float8OID, pgtype.Float4OID, pgtype.NumericOID, pgtype.Int8OID, pgtype.Int4OID}
)

// runQuery expands and runs q as the reader, checks its columns and the
// shape Grafana needs, that no hidden tenant's data shows, and returns the
// number of rows.
func runQuery(t *testing.T, conn *pgx.Conn, e expansion, q query) int {
	t.Helper()
	sql, err := e.expand(q.sql)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		t.Fatalf("query failed: %v\n%s", err, sql)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	var names []string
	for _, fd := range fds {
		names = append(names, fd.Name)
	}
	if want := wantColumns[q.name]; !slices.Equal(names, want) {
		t.Errorf("columns %q, want %q", names, want)
	}
	n := 0
	var lastTime float64 = math.Inf(-1)
	for rows.Next() {
		n++
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if s := fmt.Sprint(v); strings.Contains(s, hidden) || strings.Contains(s, hiddenTag) {
				t.Errorf("row %d shows the hidden tenant's data: %v", n, vals)
			}
		}
		if q.format == "time_series" {
			// Grafana wants time series sorted by time.
			tv := timeValue(t, vals[0])
			if tv < lastTime {
				t.Errorf("row %d: time %v before the previous row's", n, vals[0])
			}
			lastTime = tv
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query failed: %v\n%s", err, sql)
	}
	if q.format == "time_series" && len(fds) == 3 {
		if !slices.Contains(timeTypes, fds[0].DataTypeOID) {
			t.Errorf("time column has type OID %d", fds[0].DataTypeOID)
		}
		if fds[1].DataTypeOID != pgtype.TextOID {
			t.Errorf("metric column has type OID %d, want text", fds[1].DataTypeOID)
		}
		if !slices.Contains(valueTypes, fds[2].DataTypeOID) {
			t.Errorf("value column has type OID %d, want a number", fds[2].DataTypeOID)
		}
	}
	return n
}

func timeValue(t *testing.T, v any) float64 {
	t.Helper()
	switch x := v.(type) {
	case time.Time:
		return float64(x.Unix())
	case float64:
		return x
	case int64:
		return float64(x)
	case pgtype.Numeric:
		f, err := x.Float64Value()
		if err != nil {
			t.Fatal(err)
		}
		return f.Float64
	}
	t.Fatalf("time value %v of type %T", v, v)
	return 0
}

// seed writes, as the superuser, raw calls and rejects for both tenants
// over the last five hours, the minute and hour rollups computed from them
// in the shape of migrations/sql/00011 (functions/rollup's job in
// production), and anomalies.
func seed(t *testing.T, db *testkit.DB, now time.Time) {
	t.Helper()
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Admin.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("seed: %v\n%s", err, sql)
		}
	}
	type proxy struct{ tenant, env, name, app string }
	proxies := []proxy{
		{granted, "prod", "orders-v1", "shop-web"},
		{granted, "prod", "payments-v2", "shop-mobile"},
		{granted, "test", "orders-v1", ""},
		{hidden, "prod", hiddenTag, hiddenTag + "-app"},
	}
	batch := 0
	for i, p := range proxies {
		batch++
		// One call every 2 minutes for 5 hours, a 5xx every tenth, latency
		// growing with the index so percentiles differ.
		exec(`
			INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
				request_verb, request_path, response_status_code, total_response_time, target_response_time,
				request_size, response_size, is_error, developer_app, developer_email, batch_id)
			SELECT $1::timestamptz - make_interval(mins => g * 2), $2 || '-' || g, $3, 'org', $4, $5,
				'GET', '/items', CASE WHEN g % 10 = 0 THEN 503 WHEN g % 7 = 0 THEN 404 ELSE 200 END,
				20 + g % 50 + $6, 10 + g % 30, 100, 2000, g % 10 = 0, nullif($7, ''), 'dev@' || $3 || '.example', $8
			FROM generate_series(1, 150) g`,
			now, fmt.Sprintf("m%d", i), p.tenant, p.env, p.name, i*40, p.app, batch)
	}
	for i, reason := range []string{"invalid_field", "not_json", "missing_field"} {
		for _, tenant := range []string{granted, hidden} {
			detail := "example detail"
			if tenant == hidden {
				detail = hiddenTag + " detail"
			}
			batch++
			exec(`
				INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, field, detail, record_index,
					payload, payload_sha256, batch_id)
				SELECT $1::timestamptz - make_interval(mins => g * 13), $2 || '-' || g, $3, $4,
					CASE WHEN $4 = 'invalid_field' THEN 'response_status_code' END, $5, 0, '\x7b7d', sha256('\x7b7d'), $6
				FROM generate_series(1, 10) g`,
				now, fmt.Sprintf("r%d-%s", i, tenant), tenant, reason, detail, batch)
		}
	}
	exec(`
		INSERT INTO apigee.api_calls_1m (bucket_start, tenant, organization, environment, apiproxy, api_product,
			developer_app, request_verb, response_status_code, calls, errors, client_errors, request_bytes,
			response_bytes, total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
			target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist)
		SELECT date_trunc('minute', received_at, 'UTC'), tenant, organization, environment, apiproxy, api_product,
			developer_app, request_verb, response_status_code, count(*),
			count(*) FILTER (WHERE is_error OR response_status_code >= 500),
			count(*) FILTER (WHERE response_status_code BETWEEN 400 AND 499),
			coalesce(sum(request_size), 0), coalesce(sum(response_size), 0),
			count(total_response_time), coalesce(sum(total_response_time), 0), min(total_response_time),
			max(total_response_time), apigee.latency_hist_of(array_agg(total_response_time::float8)),
			count(target_response_time), coalesce(sum(target_response_time), 0), min(target_response_time),
			max(target_response_time), apigee.latency_hist_of(array_agg(target_response_time::float8))
		FROM apigee.api_calls
		GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9`)
	exec(`
		INSERT INTO apigee.api_calls_1h (bucket_start, tenant, organization, environment, apiproxy, api_product,
			developer_app, request_verb, response_status_code, calls, errors, client_errors, request_bytes,
			response_bytes, total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
			target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist)
		SELECT date_trunc('hour', bucket_start, 'UTC'), tenant, organization, environment, apiproxy, api_product,
			developer_app, request_verb, response_status_code, sum(calls), sum(errors), sum(client_errors),
			sum(request_bytes), sum(response_bytes), sum(total_ms_count), sum(total_ms_sum), min(total_ms_min),
			max(total_ms_max), apigee.latency_hist_merge(total_ms_hist), sum(target_ms_count), sum(target_ms_sum),
			min(target_ms_min), max(target_ms_max), apigee.latency_hist_merge(target_ms_hist)
		FROM apigee.api_calls_1m
		GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9`)
	// The narrow per-proxy and per-app rollups, as functions/rollup fills them.
	for _, c := range []struct{ table, bucket, dim string }{
		{"proxy_calls_1m", "minute", "apiproxy"}, {"proxy_calls_1h", "hour", "apiproxy"},
		{"app_calls_1m", "minute", "developer_app"}, {"app_calls_1h", "hour", "developer_app"},
	} {
		exec(fmt.Sprintf(`
		INSERT INTO apigee.%[1]s (bucket_start, tenant, organization, environment, %[3]s, calls, errors,
			status_2xx, status_3xx, status_4xx, status_5xx, request_bytes, response_bytes,
			total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
			target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist)
		SELECT date_trunc('%[2]s', received_at, 'UTC'), tenant, organization, environment, %[3]s, count(*),
			count(*) FILTER (WHERE is_error OR response_status_code >= 500),
			count(*) FILTER (WHERE response_status_code / 100 = 2), count(*) FILTER (WHERE response_status_code / 100 = 3),
			count(*) FILTER (WHERE response_status_code / 100 = 4), count(*) FILTER (WHERE response_status_code / 100 = 5),
			coalesce(sum(request_size), 0), coalesce(sum(response_size), 0),
			count(total_response_time), coalesce(sum(total_response_time), 0), min(total_response_time),
			max(total_response_time), apigee.latency_hist_of(array_agg(total_response_time::float8)),
			count(target_response_time), coalesce(sum(target_response_time), 0), min(target_response_time),
			max(target_response_time), apigee.latency_hist_of(array_agg(target_response_time::float8))
		FROM apigee.api_calls
		GROUP BY 1, 2, 3, 4, 5`, c.table, c.bucket, c.dim))
	}
	exec(`SELECT apigee.harden_chunks()`)
	exec(`
		INSERT INTO apigee.anomalies (bucket_start, tenant, organization, environment, apiproxy, metric, observed,
			baseline, scale, score, calls, baseline_minutes)
		VALUES ($1::timestamptz - interval '30 minutes', $2, 'org', 'prod', 'orders-v1', 'error_rate', 0.4, 0.02, 0.01, 38, 60, 60),
		       ($1::timestamptz - interval '90 minutes', $2, 'org', 'prod', 'payments-v2', 'p95_latency_ms', 900, 120, 20, 39, 50, 60),
		       ($1::timestamptz - interval '45 minutes', $3, 'org', 'prod', $4, 'error_rate', 0.9, 0.01, 0.01, 89, 80, 60)`,
		now, granted, hidden, hiddenTag)
}
