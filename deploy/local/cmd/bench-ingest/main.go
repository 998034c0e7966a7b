// Command bench-ingest measures ingest side by side in one run, against a
// fresh database with the real schema and roles, and prints one table of
// modes and one of ratios against their targets (absolute numbers drift on
// a shared machine; the ratios are what to compare):
//
//	(1a) pgx CopyFrom of the rows straight into apigee.api_calls (as owner)
//	(1b) COPY into a staging table + INSERT … ON CONFLICT DO NOTHING, as the
//	     ingest role, 1,000-row transactions: the staging-COPY limit
//	(2)  the batch path end to end: 500-record push messages, 4 in flight,
//	     over HTTP to the ingest function
//	(3)  the push path: single-record deliveries, 64 (3a) and 256 (3b) in
//	     flight, to the ingest function
//	(4)  a naive function, one autocommitted INSERT per message through a
//	     pgx pool, 64 (4a) and 256 (4b) in flight
//	(3c) the push path at a fixed rate, 2,000 and 8,000 deliveries a
//	     second (3c2k, 3c8k), up to 512 in flight: an open loop, as Pub/Sub
//	     pushes a topic's messages when it has no backlog (the rate is the
//	     publishers', not the function's); informative: what a batch costs
//	     the database below capacity, where INGEST_BATCH_MAX_WAIT, not the
//	     database's speed, decides the batch size
//	(0a) a handler that reads the body and answers 204 (64 and 256 in
//	     flight): the floor of any push function's CPU per delivery
//	(0b) the ingest function with a writer that stores nothing
//	(0c) the floor, but each delivery waits floorWait (about the push
//	     path's median wait for its commit) before its 204, 64 and 256
//	     in flight: about the request rates and parked requests of (3a)
//	     and (3b), without the work; informative, not a target of issue
//	     13
//	(0e) the floor, but answering in groups: a group opens with its first
//	     delivery and all of it is answered floorWait later, at once, as a
//	     commit answers its batch; 64 and 256 in flight: the least CPU a
//	     function that answers after its commit can take; informative
//	(0d) (0b) whose writer takes floorWait per batch, 64 in flight: the
//	     push path's batches and wake-ups and all of its function's work
//	     but the database write (pgx's encoding and round trips);
//	     informative
//
// Every HTTP mode runs its server and its load generator as two processes
// of this binary (-role serve, -role load), so the function's CPU is its
// own (from /proc), the database's is the sum over its backends, and the
// generator's is neither. The ingest function is the real one
// (function.Main, as Cloud Run starts it): its cold start to the first
// acknowledged delivery and its peak RSS are reported too. Each server is
// warmed up by a short run before the measured one.
//
// Usage: BENCH_DATABASE_URL=postgres://superuser@host/db go run ./deploy/local/cmd/bench-ingest
// (make bench-ingest starts the local TimescaleDB and sets it; given
// BENCH_DATABASE_URL=$(deploy/local/postgres.sh up | tail -n1) it measures
// plain PostgreSQL instead).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/migrations"
	"apigee-timescale/shared/record"
)

var (
	role    = flag.String("role", "", "internal: serve or load, for the child processes")
	kind    = flag.String("serve", "", "internal: the server kind of -role serve")
	addr    = flag.String("addr", "", "internal: the server of -role load")
	perMsg  = flag.Int("per-msg", 1, "internal: records per message of -role load")
	clients = flag.Int("clients", 256, "internal: requests in flight of -role load")
	paced   = flag.Int("rate", 0, "internal: deliveries a second of -role load (0: as fast as its clients are answered)")
	rows    = flag.Int("rows", 200000, "rows for the bulk modes (1a, 1b, 2)")
	msgs    = flag.Int("msgs", 60000, "single-record deliveries for (3) and (0); (4) takes 5,000. Long enough that a few slow batches do not decide the p99")
	only    = flag.String("only", "", "run only the modes whose key starts with one of these, comma-separated, e.g. 3 or 1b,2")
	cpuprof = flag.String("cpuprofile", "", "write a CPU profile of the server process to this file (the last mode run keeps it; use with -only)")
	// serveEnv exists for settings of the function's process alone, such as
	// GOMAXPROCS=1 as Cloud Run at --cpu=1 may run it: set for the whole
	// bench, it would also slow the load generator.
	serveEnv = flag.String("serve-env", "", "KEY=VALUE pairs, comma-separated, added to the server processes' environment only, e.g. GOMAXPROCS=1")
)

func main() {
	flag.Parse()
	var err error
	switch *role {
	case "serve":
		err = serve(*kind)
	case "load":
		err = generate(*addr, *msgs, *perMsg, *clients, *paced)
	case "":
		err = run(context.Background())
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-ingest:", err)
		os.Exit(1)
	}
}

type result struct {
	key, name string
	n         int // rows stored (or records answered, without a database)
	deliv     int // HTTP deliveries
	elapsed   time.Duration
	p50, p99  time.Duration
	batches   int // ingest transactions, where the mode goes through ingest
	// fnCPU is the server process's CPU, pgCPU the database backends'.
	fnCPU, pgCPU time.Duration
	rss          int64         // the server's peak RSS
	cold         time.Duration // the server's start to its first 204
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

// mode is one measurement; its key names it in the ratio table.
type mode struct {
	key string
	run func() (result, error)
}

func run(ctx context.Context) error {
	server := os.Getenv("BENCH_DATABASE_URL")
	if server == "" {
		return fmt.Errorf("BENCH_DATABASE_URL is not set (a superuser URL of a TimescaleDB or PostgreSQL server)")
	}
	dbURL, ingestURL, cleanup, err := setup(ctx, server)
	if err != nil {
		return err
	}
	defer cleanup()
	owner, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer owner.Close()
	ing, err := pgxpool.New(ctx, ingestURL)
	if err != nil {
		return err
	}
	defer ing.Close()
	auth, err := signPushToken(ctx)
	if err != nil {
		return err
	}
	h := &harness{owner: owner, env: append([]string{"DATABASE_URL=" + ingestURL}, auth...)}
	if *cpuprof != "" {
		h.env = append(h.env, envProfile+"="+*cpuprof)
	}
	var res []result
	for _, m := range h.modes(ctx, ing) {
		if !selected(m.key) {
			continue
		}
		r, err := m.run()
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %-62s %9.0f rows/s\n", r.name, r.rate())
		res = append(res, r)
		if err := reset(ctx, dbURL); err != nil {
			return err
		}
	}
	report(res)
	return nil
}

// selected reports whether -only takes the mode key.
func selected(key string) bool {
	if *only == "" {
		return true
	}
	for p := range strings.SplitSeq(*only, ",") {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func (h *harness) modes(ctx context.Context, ing *pgxpool.Pool) []mode {
	bulk := func() [][]byte { return makeRecordsPrefixed(*rows, randHex(4)) }
	naive := min(*msgs, 5000)
	return []mode{
		{"1a", func() (result, error) { return benchCopy(ctx, h.owner, bulk()) }},
		{"1b", func() (result, error) { return benchStaging(ctx, h.owner, ing, bulk()) }},
		{"2", func() (result, error) {
			return h.http(ctx, "2", "(2) batch path: 500-record messages, 4 in flight", "push", *rows/500, 500, 4)
		}},
		{"3a", func() (result, error) {
			return h.http(ctx, "3a", "(3a) push path: single-record deliveries, 64 in flight", "push", *msgs, 1, 64)
		}},
		{"3b", func() (result, error) {
			return h.http(ctx, "3b", "(3b) push path: single-record deliveries, 256 in flight", "push", *msgs, 1, 256)
		}},
		{"3c2k", func() (result, error) {
			return h.httpPaced(ctx, "3c2k", "(3c) push path: single-record deliveries at 2,000 a second", "push", 2000)
		}},
		{"3c8k", func() (result, error) {
			return h.httpPaced(ctx, "3c8k", "(3c) push path: single-record deliveries at 8,000 a second", "push", 8000)
		}},
		{"4a", func() (result, error) {
			return h.http(ctx, "4a", "(4a) naive INSERT per message, 64 in flight", "naive", naive, 1, 64)
		}},
		{"4b", func() (result, error) {
			return h.http(ctx, "4b", "(4b) naive INSERT per message, 256 in flight", "naive", naive, 1, 256)
		}},
		{"0a64", func() (result, error) {
			return h.http(ctx, "0a64", "(0a) floor: read the body, answer 204, 64 in flight", "floor", *msgs, 1, 64)
		}},
		{"0a256", func() (result, error) {
			return h.http(ctx, "0a256", "(0a) floor: read the body, answer 204, 256 in flight", "floor", *msgs, 1, 256)
		}},
		{"0c64", func() (result, error) {
			return h.http(ctx, "0c64", fmt.Sprintf("(0c) floor that waits %v before its 204, 64 in flight", floorWait), "floorwait", *msgs, 1, 64)
		}},
		{"0c256", func() (result, error) {
			return h.http(ctx, "0c256", fmt.Sprintf("(0c) floor that waits %v before its 204, 256 in flight", floorWait), "floorwait", *msgs, 1, 256)
		}},
		{"0e64", func() (result, error) {
			return h.http(ctx, "0e64", fmt.Sprintf("(0e) floor answering in groups %v after each group's first delivery, 64 in flight", floorWait), "floorgroup", *msgs, 1, 64)
		}},
		{"0e256", func() (result, error) {
			return h.http(ctx, "0e256", fmt.Sprintf("(0e) floor answering in groups %v after each group's first delivery, 256 in flight", floorWait), "floorgroup", *msgs, 1, 256)
		}},
		{"0d64", func() (result, error) {
			return h.http(ctx, "0d64", fmt.Sprintf("(0d) ingest with a writer that waits %v and stores nothing, 64 in flight", floorWait), "nodbwait", *msgs, 1, 64)
		}},
		{"0b", func() (result, error) {
			return h.http(ctx, "0b", "(0b) ingest with a writer that stores nothing, 256 in flight", "nodb", *msgs, 1, 256)
		}},
	}
}

// harness runs the HTTP modes against the bench database.
type harness struct {
	owner *pgxpool.Pool
	env   []string
}

// pacedFor is how long a paced mode sends: long enough for thousands of
// batches at either rate, short enough to keep make bench's length.
const pacedFor = 8 * time.Second

// pacedInFlight bounds a paced mode's requests in flight: far above what
// either rate needs (rate × latency is tens), so the pace, not the
// answers, sets when deliveries arrive.
const pacedInFlight = 512

// httpPaced is http with the deliveries sent at rate a second.
func (h *harness) httpPaced(ctx context.Context, key, name, kind string, rate int) (result, error) {
	return h.run(ctx, key, name, kind, rate*int(pacedFor/time.Second), 1, pacedInFlight, rate)
}

// http measures one HTTP mode: a fresh server process, a warm-up run, then
// the measured run with the server's and the backends' CPU read around it.
func (h *harness) http(ctx context.Context, key, name, kind string, n, per, inFlight int) (result, error) {
	return h.run(ctx, key, name, kind, n, per, inFlight, 0)
}

func (h *harness) run(ctx context.Context, key, name, kind string, n, per, inFlight, rate int) (result, error) {
	r := result{key: key, name: name, n: n * per, deliv: n}
	srv, err := startServer(kind, h.env)
	if err != nil {
		return r, err
	}
	defer srv.stop()
	r.cold = srv.cold
	warm, err := startLoad(srv.addr, max(n/20, 2*inFlight), per, inFlight, rate)
	if err != nil {
		return r, err
	}
	if _, err := warm.run(); err != nil {
		return r, fmt.Errorf("warm-up: %w", err)
	}
	l, err := startLoad(srv.addr, n, per, inFlight, rate)
	if err != nil {
		return r, err
	}
	b0 := h.batches(ctx)
	fn0, _ := testkit.BackendCPU(srv.pid())
	pg0 := backendsCPU(ctx, h.owner)
	lr, err := l.run()
	fn1, _ := testkit.BackendCPU(srv.pid())
	pg1 := backendsCPU(ctx, h.owner)
	r.elapsed, r.p50, r.p99 = lr.Elapsed, lr.P50, lr.P99
	r.batches = h.batches(ctx) - b0
	r.fnCPU, r.rss = fn1-fn0, srv.peakRSS()
	for pid, t := range pg1 {
		r.pgCPU += t - pg0[pid] // a backend opened during the run starts from 0
	}
	return r, err
}

func (h *harness) batches(ctx context.Context) int {
	var n int
	h.owner.QueryRow(ctx, "SELECT count(*) FROM apigee.ingest_batches").Scan(&n) //nolint:errcheck // 0 then
	return n
}

func report(res []result) {
	by := map[string]result{}
	for _, r := range res {
		by[r.key] = r
	}
	fmt.Printf("\ningest benchmark — %d cores, %s, %s\n\n", runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, time.Now().UTC().Format(time.DateOnly))
	fmt.Printf("| mode | rows | rows/s | p50 | p99 | rows/batch | function µs/delivery | backends µs/row |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	dash := func(ok bool, f string, v float64) string {
		if !ok {
			return "–"
		}
		return fmt.Sprintf(f, v)
	}
	for _, r := range res {
		lat := func(d time.Duration) string { return dash(d > 0, "%.1f ms", float64(d.Microseconds())/1000) }
		fmt.Printf("| %s | %d | %.0f | %s | %s | %s | %s | %s |\n", r.name, r.n, r.rate(), lat(r.p50), lat(r.p99),
			dash(r.batches > 0, "%.0f", float64(r.n)/float64(max(r.batches, 1))),
			dash(r.fnCPU > 0, "%.0f", r.fnPerDelivery()), dash(r.pgCPU > 0, "%.1f", r.pgPerRow()))
	}
	fmt.Printf("\n| ratio | measured | target | met |\n|---|---:|---|---|\n")
	ratio := func(what, a, b string, f func(result) float64, target string, ok func(float64) bool) {
		ra, okA := by[a]
		rb, okB := by[b]
		if !okA || !okB || f(rb) == 0 {
			return
		}
		v := f(ra) / f(rb)
		met := "–"
		if ok != nil {
			met = yes(ok(v))
		}
		fmt.Printf("| ingest: %s | %.2f × | %s | %s |\n", what, v, target, met)
	}
	rate := func(r result) float64 { return r.rate() }
	pg := func(r result) float64 { return r.pgPerRow() }
	fn := func(r result) float64 { return r.fnPerDelivery() }
	atMost := func(t float64) func(float64) bool { return func(v float64) bool { return v <= t } }
	ratio("batch path rows/s (2) ÷ staging-COPY limit (1b)", "2", "1b", rate, "≥ 0.9 ×", func(v float64) bool { return v >= 0.9 })
	ratio("backends' CPU per row, push 64 in flight (3a) ÷ batch path (2)", "3a", "2", pg, "≤ 1.5 ×", atMost(1.5))
	ratio("backends' CPU per row, push 256 in flight (3b) ÷ batch path (2)", "3b", "2", pg, "≤ 1.5 ×", atMost(1.5))
	ratio("backends' CPU per row, push at 2,000 a second (3c) ÷ batch path (2) (informative)", "3c2k", "2", pg, "–", nil)
	ratio("backends' CPU per row, push at 8,000 a second (3c) ÷ batch path (2) (informative)", "3c8k", "2", pg, "–", nil)
	ratio("backends' CPU per row, push (3a) ÷ naive (4a), 64 in flight", "3a", "4a", pg, "≤ 0.2 ×", atMost(0.2))
	ratio("backends' CPU per row, push (3b) ÷ naive (4b), 256 in flight", "3b", "4b", pg, "≤ 0.2 ×", atMost(0.2))
	ratio("function CPU per delivery, push (3a) ÷ floor (0a), 64 in flight", "3a", "0a64", fn, "≤ 2 ×", atMost(2))
	ratio("function CPU per delivery, push (3b) ÷ floor (0a), 256 in flight", "3b", "0a256", fn, "≤ 2 ×", atMost(2))
	ratio("function CPU per delivery, push (3a) ÷ floor that waits (0c), 64 in flight (informative)", "3a", "0c64", fn, "–", nil)
	ratio("function CPU per delivery, push (3b) ÷ floor that waits (0c), 256 in flight (informative)", "3b", "0c256", fn, "–", nil)
	// What waiting for a commit costs a handler that does nothing else,
	// each delivery on its own timer (0c) or answered with its group as a
	// commit answers its batch (0e): near or above 2 ×, no function that
	// answers after its commit can meet the ≤ 2 × (0a) targets above, and
	// (3) ÷ (0e) is what ingest's own work adds.
	ratio("function CPU per delivery, floor that waits (0c) ÷ floor (0a), 64 in flight (informative)", "0c64", "0a64", fn, "–", nil)
	ratio("function CPU per delivery, floor that waits (0c) ÷ floor (0a), 256 in flight (informative)", "0c256", "0a256", fn, "–", nil)
	ratio("function CPU per delivery, floor answering in groups (0e) ÷ floor (0a), 64 in flight (informative)", "0e64", "0a64", fn, "–", nil)
	ratio("function CPU per delivery, floor answering in groups (0e) ÷ floor (0a), 256 in flight (informative)", "0e256", "0a256", fn, "–", nil)
	ratio("function CPU per delivery, push (3a) ÷ floor answering in groups (0e), 64 in flight (informative)", "3a", "0e64", fn, "–", nil)
	ratio("function CPU per delivery, push (3b) ÷ floor answering in groups (0e), 256 in flight (informative)", "3b", "0e256", fn, "–", nil)
	ratio("function CPU per delivery, ingest without a database that waits (0d) ÷ floor (0a), 64 in flight (informative)", "0d64", "0a64", fn, "–", nil)
	var cold time.Duration
	var rss int64
	for _, r := range res {
		if r.key == "2" || strings.HasPrefix(r.key, "3") {
			cold, rss = max(cold, r.cold), max(rss, r.rss)
		}
	}
	if cold > 0 {
		ms := float64(cold.Microseconds()) / 1000
		fmt.Printf("| ingest: cold start to first acknowledged delivery (slowest of 2, 3a, 3b) | %.0f ms | ≤ 300 ms | %s |\n", ms, yes(ms <= 300))
		mib := float64(rss) / (1 << 20)
		fmt.Printf("| ingest: peak RSS of the function at full load (largest of 2, 3a, 3b) | %.1f MiB | ≤ 64 MiB | %s |\n", mib, yes(mib <= 64))
	}
	fmt.Println("\nCPU is read from /proc: the function's process, and every backend of the bench database (the load generator is a process of its own, counted in neither).")
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func (r result) pgPerRow() float64 { return float64(r.pgCPU.Microseconds()) / float64(max(r.n, 1)) }

func (r result) fnPerDelivery() float64 {
	return float64(r.fnCPU.Microseconds()) / float64(max(r.deliv, 1))
}

// setup creates a throwaway database with the schema and an ingest login.
func setup(ctx context.Context, server string) (dbURL, ingestURL string, cleanup func(), err error) {
	suffix := randHex(6)
	name := "apigee_bench_" + suffix
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		return "", "", nil, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", "", nil, err
	}
	role, pw := "bench_ingest_"+suffix, randHex(16)
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE apigee_ingest", role, pw)); err != nil {
		// apigee_ingest exists only after a first migration on this server.
		if _, err := migrations.Up(ctx, withDB(server, name, ""), migrations.Options{}); err != nil {
			return "", "", nil, err
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE apigee_ingest", role, pw)); err != nil {
			return "", "", nil, err
		}
	}
	dbURL = withDB(server, name, "")
	if _, err := migrations.Up(ctx, dbURL, migrations.Options{}); err != nil {
		return "", "", nil, err
	}
	u, _ := url.Parse(dbURL)
	u.User = url.UserPassword(role, pw)
	cleanup = func() {
		c, err := pgx.Connect(context.Background(), server)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		c.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
	}
	return dbURL, u.String(), cleanup, nil
}

func withDB(server, name, _ string) string {
	u, _ := url.Parse(server)
	u.Path = "/" + name
	return u.String()
}

// reset empties the raw tables between modes so each starts alike.
func reset(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `SET ROLE apigee_owner;
		TRUNCATE apigee.api_calls, apigee.ingest_rejects, apigee.ingest_batches, apigee.rollup_invalidations;
		RESET ROLE; CHECKPOINT`)
	return err
}

// makeRecords renders n distinct, realistic apigee.call.v1 records over the
// last few hours.
func makeRecordsPrefixed(n int, run string) [][]byte {
	proxies := []string{"orders-v1", "payments-v2", "catalog-v1", "users-v1", "search-v3"}
	now := time.Now().UTC()
	out := make([][]byte, n)
	for i := range n {
		r := map[string]any{
			"schema": record.SchemaV1, "message_id": fmt.Sprintf("%s-%d", run, i),
			"received_at":  now.Add(-time.Duration(i%(4*3600)) * time.Second).Format(time.RFC3339Nano),
			"organization": "acme", "environment": "prod", "apiproxy": proxies[i%len(proxies)],
			"request_verb": "GET", "request_path": fmt.Sprintf("/v1/items/%d", i%997),
			"response_status_code": "200", "total_response_time": fmt.Sprint(20 + i%180),
			"target_response_time": fmt.Sprint(10 + i%150), "request_size": "0", "response_size": "1834",
			"client_ip": fmt.Sprintf("203.0.113.%d", i%250), "useragent": "okhttp/4.12.0",
			"developer_app": fmt.Sprintf("app-%d", i%40), "api_product": "gold", "tenant": fmt.Sprintf("tenant-%d", i%7),
			"identity": map[string]any{"subject": fmt.Sprintf("user-%d", i%1000), "auth": "oauth2"},
		}
		out[i], _ = json.Marshal(r)
	}
	return out
}

func parsed(data [][]byte) []record.Record {
	recs := make([]record.Record, 0, len(data))
	for _, d := range data {
		r, rej := record.ParseRecord(d, record.DefaultLimits())
		if rej == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

var copyCols = []string{"received_at", "message_id", "tenant", "organization", "environment", "apiproxy",
	"request_verb", "request_path", "response_status_code", "total_response_time", "target_response_time",
	"request_size", "response_size", "client_ip", "useragent", "developer_app", "api_product",
	"identity_subject", "identity_auth", "batch_id"}

func values(r *record.Record) []any {
	return []any{r.ReceivedAt, r.MessageID, r.Tenant, r.Organization, r.Environment, r.APIProxy,
		r.RequestVerb, r.RequestPath, r.ResponseStatusCode, r.TotalResponseTime, r.TargetResponseTime,
		r.RequestSize, r.ResponseSize, r.ClientIP, r.UserAgent, r.DeveloperApp, r.APIProduct,
		r.Identity.Subject, r.Identity.Auth, int64(1)}
}

func benchCopy(ctx context.Context, pool *pgxpool.Pool, data [][]byte) (result, error) {
	recs := parsed(data)
	r := result{key: "1a", name: "(1a) CopyFrom into the hypertable, 5,000-row batches", n: len(recs)}
	start := time.Now()
	for lo := 0; lo < len(recs); lo += 5000 {
		chunk := recs[lo:min(lo+5000, len(recs))]
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"apigee", "api_calls"}, copyCols, pgx.CopyFromSlice(len(chunk), func(i int) ([]any, error) {
			return values(&chunk[i]), nil
		})); err != nil {
			return r, err
		}
	}
	r.elapsed = time.Since(start)
	return r, nil
}

func benchStaging(ctx context.Context, owner, pool *pgxpool.Pool, data [][]byte) (r result, err error) {
	recs := parsed(data)
	r = result{key: "1b", name: "(1b) COPY to staging + INSERT ON CONFLICT, ingest role", n: len(recs)}
	pg0 := backendsCPU(ctx, owner)
	defer func() {
		for pid, t := range backendsCPU(ctx, owner) {
			r.pgCPU += t - pg0[pid]
		}
	}()
	cols := strings.Join(copyCols, ", ")
	start := time.Now()
	for lo := 0; lo < len(recs); lo += 1000 {
		chunk := recs[lo:min(lo+1000, len(recs))]
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS bench_stage (
				received_at timestamptz, message_id text, tenant text, organization text, environment text, apiproxy text,
				request_verb text, request_path text, response_status_code smallint, total_response_time integer,
				target_response_time integer, request_size bigint, response_size bigint, client_ip inet, useragent text,
				developer_app text, api_product text, identity_subject text, identity_auth text, batch_id bigint) ON COMMIT DELETE ROWS`); err != nil {
				return err
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bench_stage"}, copyCols, pgx.CopyFromSlice(len(chunk), func(i int) ([]any, error) {
				return values(&chunk[i]), nil
			})); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO apigee.api_calls ("+cols+") SELECT "+cols+" FROM bench_stage ON CONFLICT DO NOTHING")
			return err
		})
		if err != nil {
			return r, err
		}
	}
	r.elapsed = time.Since(start)
	return r, nil
}

// backendsCPU maps every other backend connected to the bench database to
// its CPU time so far; empty when the server is not on this machine.
func backendsCPU(ctx context.Context, owner *pgxpool.Pool) map[int]time.Duration {
	out := map[int]time.Duration{}
	rows, err := owner.Query(ctx, `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()`)
	if err != nil {
		return out
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return out
	}
	for _, pid := range pids {
		if t, ok := testkit.BackendCPU(pid); ok {
			out[pid] = t
		}
	}
	return out
}

// leanRun posts reqs with `clients` keep-alive connections and measures
// the time to each answer. It is lean like wrk (requests pre-serialised,
// the status line parsed by hand) to leave the CPU to what is measured.
// A rate above 0 sends request i at i/rate seconds from the start (or as
// soon as a connection is free, if all are busy then: the result's
// elapsed time shows it) instead of as soon as an answer frees one.
func leanRun(addr string, reqs [][]byte, clients, rate int) (loadResult, error) {
	var r loadResult
	next := make(chan int)
	var mu sync.Mutex
	var firstErr error
	lat := make([]time.Duration, 0, len(reqs))
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				fail(err)
				for range next {
				}
				return
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			mine := make([]time.Duration, 0, len(reqs)/clients+1)
			for i := range next {
				t0 := time.Now()
				code, err := leanExchange(conn, br, reqs[i])
				mine = append(mine, time.Since(t0))
				if err == nil && code != http.StatusNoContent {
					err = fmt.Errorf("delivery %d answered %d", i, code)
				}
				if err != nil {
					fail(err)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	for i := range reqs {
		if rate > 0 {
			if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
				time.Sleep(wait)
			}
		}
		next <- i
	}
	close(next)
	wg.Wait()
	r.Elapsed = time.Since(start)
	if len(lat) > 0 {
		slices.Sort(lat)
		r.P50, r.P99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r, firstErr
}

// leanExchange writes one request and reads its answer: the status code,
// headers up to the blank line, and a Content-Length or chunked body.
func leanExchange(conn net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, fmt.Errorf("short status line %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("status line %q", line)
	}
	length, chunked := 0, false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if k, v, ok := strings.Cut(strings.TrimSpace(string(h)), ":"); ok {
			switch strings.ToLower(k) {
			case "content-length":
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			case "transfer-encoding":
				chunked = strings.Contains(strings.ToLower(v), "chunked")
			}
		}
	}
	if chunked {
		_, err := io.Copy(io.Discard, httputil.NewChunkedReader(br))
		if err != nil {
			return 0, err
		}
		// The chunked body ends with an empty trailer line.
		_, err = br.ReadSlice('\n')
		return code, err
	}
	_, err = br.Discard(length)
	return code, err
}

func envelope(id string, data []byte) string {
	b, _ := json.Marshal(map[string]any{"message": map[string]any{
		"data": base64.StdEncoding.EncodeToString(data), "messageId": id,
		"publishTime": time.Now().UTC().Format(time.RFC3339Nano)}, "subscription": "projects/bench/subscriptions/s"})
	return string(b)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
