// Command bench measures ingest side by side in one run, against a fresh
// database with the real schema and roles, and prints one table whose
// ratios are what to compare (absolute numbers drift on a shared machine):
//
//	(1a) pgx CopyFrom of the rows straight into apigee.api_calls (as owner)
//	(1b) COPY into a staging table + INSERT … ON CONFLICT DO NOTHING, as the
//	     ingest role: the ceiling for exactly-once rows under RLS
//	(2)  the ingest core (decode, validate, group commit, write) fed
//	     100-record messages, in process
//	(3)  the HTTP push path: many concurrent single-record deliveries over
//	     loopback HTTP, msgs/s and time to answer
//	(4a) a naive function, one autocommitted INSERT per message, one
//	     request at a time (Cloud Run functions' default concurrency of 1)
//	(4b) the same naive function with 8 requests at a time
//
// and two ceilings for (3), measured with the same load generator on the
// same cores: (0a) a handler that reads the body and answers 204, the most
// any push function can do here, and (0b) the ingest HTTP path with a
// writer that stores nothing, the most ingest can do with a free database.
//
// Usage: BENCH_DATABASE_URL=postgres://superuser@host/db go run ./deploy/local/cmd/bench-ingest
// (make bench-ingest starts the local TimescaleDB and sets it).
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
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/migrations"
	"apigee-timescale/shared/record"
)

var (
	rows         = flag.Int("rows", 200000, "rows for the bulk modes (1a, 1b, 2)")
	msgs         = flag.Int("msgs", 60000, "single-record deliveries for the HTTP modes (3, 0); (4) takes the first 5,000. Long enough that a fresh instance's first ~100 ms (connections, prepared statements, partition checks) does not decide the p99")
	clients      = flag.Int("clients", 256, "concurrent HTTP clients for (3)")
	netHTTP      = flag.Bool("nethttp", false, "drive (3) and (4) with Go's net/http client instead of the lean one")
	coreInFlight = flag.Int("core-inflight", 32, "100-record messages in flight for (2), as a push subscription with instance concurrency would send them")
	only         = flag.String("only", "", "run only the modes whose label starts with this, e.g. (3)")
	cpuprof      = flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
)

func main() {
	flag.Parse()
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type result struct {
	name     string
	n        int
	elapsed  time.Duration
	p50, p99 time.Duration
	batches  int // ingest transactions, where the mode goes through ingest
	// goCPU and pgCPU are what this process (function and load generator)
	// and the database's backends spent, for the modes that measure it.
	goCPU, pgCPU time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func run(ctx context.Context) error {
	server := os.Getenv("BENCH_DATABASE_URL")
	if server == "" {
		return fmt.Errorf("BENCH_DATABASE_URL is not set (a superuser URL of a TimescaleDB server)")
	}
	dbURL, ingestURL, cleanup, err := setup(ctx, server)
	if err != nil {
		return err
	}
	defer cleanup()

	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
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
	data := makeRecords(*rows)
	var res []result
	step := func(r result, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		if err := owner.QueryRow(ctx, "SELECT count(*) FROM apigee.ingest_batches").Scan(&r.batches); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "  %-62s %9.0f rows/s\n", r.name, r.rate())
		res = append(res, r)
		return reset(ctx, dbURL)
	}

	single := makeRecords(*msgs)
	naive := single[:min(len(single), 5000)]
	modes := []struct {
		label string
		run   func() (result, error)
	}{
		{"(1a)", func() (result, error) { return benchCopy(ctx, owner, data) }},
		{"(1b)", func() (result, error) { return benchStaging(ctx, ing, data) }},
		{"(2)", func() (result, error) { return benchCore(ctx, ingestURL, data) }},
		{"(3)", func() (result, error) { return benchHTTP(ctx, owner, ingestURL, single) }},
		{"(4a)", func() (result, error) { return benchNaive(ctx, ingestURL, naive, 1) }},
		{"(4b)", func() (result, error) { return benchNaive(ctx, ingestURL, naive, 8) }},
		{"(0a)", func() (result, error) { return benchFloor(single) }},
		{"(0b)", func() (result, error) { return benchNoDB(ctx, single) }},
	}
	for _, m := range modes {
		if *only != "" && !strings.HasPrefix(m.label, *only) {
			continue
		}
		if err := step(m.run()); err != nil {
			return err
		}
	}
	report(res)
	return nil
}

func report(res []result) {
	fmt.Printf("\ningest benchmark — %d cores, %s, %s\n\n", runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, time.Now().UTC().Format(time.DateOnly))
	fmt.Printf("| mode | rows | rows/s | p50 | p99 | rows/batch | ratio |\n|---|---:|---:|---:|---:|---:|---:|\n")
	base := map[string]float64{}
	for _, r := range res {
		base[r.name[:4]] = r.rate()
	}
	for _, r := range res {
		ratio := ""
		switch r.name[:4] {
		case "(1b)":
			ratio = fmt.Sprintf("%.2f × (1a)", r.rate()/base["(1a)"])
		case "(2) ":
			ratio = fmt.Sprintf("%.2f × (1b)", r.rate()/base["(1b)"])
		case "(3) ":
			ratio = fmt.Sprintf("%.1f × (4a), %.1f × (4b)", r.rate()/base["(4a)"], r.rate()/base["(4b)"])
		case "(0a)", "(0b)":
			ratio = fmt.Sprintf("%.1f × (4a); (3) reaches %.0f%% of it", r.rate()/base["(4a)"], 100*base["(3) "]/r.rate())
		}
		lat := func(d time.Duration) string {
			if d == 0 {
				return "–"
			}
			return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
		}
		perBatch := "–"
		if r.batches > 0 {
			perBatch = fmt.Sprintf("%.0f", float64(r.n)/float64(r.batches))
		}
		fmt.Printf("| %s | %d | %.0f | %s | %s | %s | %s |\n", r.name, r.n, r.rate(), lat(r.p50), lat(r.p99), perBatch, ratio)
	}
	for _, r := range res {
		if r.goCPU > 0 {
			perRow := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.n) }
			fmt.Printf("\nCPU per delivery in %s: this process %.0f µs (function and load generator), PostgreSQL backends %.0f µs",
				r.name[:4], perRow(r.goCPU), perRow(r.pgCPU))
		}
	}
	fmt.Println("\n\ntargets: (2) ≥ 0.9 × (1b); (3) ≥ 10 × (4a) with p99 ≤ 100 ms")
	fmt.Println("(0a) and (0b) are ceilings for (3) on this machine, not targets: the load generator, the function and the database share its cores")
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
func makeRecords(n int) [][]byte {
	proxies := []string{"orders-v1", "payments-v2", "catalog-v1", "users-v1", "search-v3"}
	now := time.Now().UTC()
	out := make([][]byte, n)
	run := randHex(4)
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
	r := result{name: "(1a) CopyFrom into the hypertable, 5,000-row batches", n: len(recs)}
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

func benchStaging(ctx context.Context, pool *pgxpool.Pool, data [][]byte) (result, error) {
	recs := parsed(data)
	r := result{name: "(1b) COPY to staging + INSERT ON CONFLICT, ingest role", n: len(recs)}
	cols := strings.Join(copyCols, ", ")
	start := time.Now()
	for lo := 0; lo < len(recs); lo += 1000 {
		chunk := recs[lo:min(lo+1000, len(recs))]
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
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

func service(ctx context.Context, dsn string) (*ingest.Service, *pgxpool.Pool, error) {
	cfg, err := ingest.ConfigFromEnv()
	if err != nil {
		return nil, nil, err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, nil, err
	}
	s, err := ingest.NewService(cfg, ingest.Deps{DB: pool})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return s, pool, nil
}

// benchCore feeds 100-record NDJSON messages to the ingest core in process,
// -core-inflight at a time.
func benchCore(ctx context.Context, dsn string, data [][]byte) (result, error) {
	r := result{name: "(2) ingest core, 100-record messages", n: len(data)}
	s, pool, err := service(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	defer s.Close(ctx)
	var bodies []string
	for lo := 0; lo < len(data); lo += 100 {
		var b strings.Builder
		for _, d := range data[lo:min(lo+100, len(data))] {
			b.Write(d)
			b.WriteByte('\n')
		}
		bodies = append(bodies, envelope(fmt.Sprint(lo), []byte(b.String())))
	}
	start := time.Now()
	_, err = drive(len(bodies), *coreInFlight, func(i int) (int, error) {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(bodies[i])))
		return w.Code, nil
	})
	r.elapsed = time.Since(start)
	return r, err
}

func benchHTTP(ctx context.Context, owner *pgxpool.Pool, dsn string, data [][]byte) (result, error) {
	r := result{name: fmt.Sprintf("(3) HTTP push, %d concurrent single-record deliveries", *clients), n: len(data)}
	s, pool, err := service(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	defer s.Close(ctx)
	srv := httptest.NewServer(s)
	defer srv.Close()
	go0, pg0 := processCPU(), backendsCPU(ctx, owner)
	r, err = httpRun(r, srv.URL, data, *clients)
	go1, pg1 := processCPU(), backendsCPU(ctx, owner)
	r.goCPU = go1 - go0
	for pid, t := range pg1 {
		r.pgCPU += t - pg0[pid] // a backend the pool opened during the run starts from 0
	}
	return r, err
}

// processCPU is this process's CPU time so far, user + system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// benchFloor answers every delivery 204 after reading it: no decoding, no
// database. Nothing that serves push requests over HTTP here can do more.
func benchFloor(data [][]byte) (result, error) {
	r := result{name: fmt.Sprintf("(0a) ceiling: read the body, answer 204, %d clients", *clients), n: len(data)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body) //nolint:errcheck // a floor, not a function
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	return httpRun(r, srv.URL, data, *clients)
}

// discard is a batch writer that stores nothing and reports every call
// inserted.
type discard struct{}

func (discard) Write(_ context.Context, b *ingest.Batch) (ingest.Result, error) {
	return ingest.Result{Inserted: len(b.Calls), Rejected: len(b.Rejects)}, nil
}

// benchNoDB is (3) with the database write replaced by discard: decoding,
// validation, batching and answering, without the database's share of
// the CPU.
func benchNoDB(ctx context.Context, data [][]byte) (result, error) {
	r := result{name: "(0b) ceiling: (3) with a writer that stores nothing", n: len(data)}
	cfg, err := ingest.ConfigFromEnv()
	if err != nil {
		return r, err
	}
	s, err := ingest.NewService(cfg, ingest.Deps{Writer: discard{}})
	if err != nil {
		return r, err
	}
	defer s.Close(ctx)
	srv := httptest.NewServer(s)
	defer srv.Close()
	go0 := processCPU()
	r, err = httpRun(r, srv.URL, data, *clients)
	r.goCPU = processCPU() - go0
	return r, err
}

// benchNaive is the function people write first: one INSERT per message,
// autocommitted, handling `concurrency` requests at a time.
func benchNaive(ctx context.Context, dsn string, data [][]byte, concurrency int) (result, error) {
	r := result{name: fmt.Sprintf("(4%c) naive INSERT per message, concurrency %d", "ab"[min(concurrency-1, 1)], concurrency), n: len(data)}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	sem := make(chan struct{}, concurrency)
	cols := strings.Join(copyCols, ", ")
	ph := make([]string, len(copyCols))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	insert := "INSERT INTO apigee.api_calls (" + cols + ") VALUES (" + strings.Join(ph, ", ") + ") ON CONFLICT DO NOTHING"
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		sem <- struct{}{}
		defer func() { <-sem }()
		var env struct {
			Message struct{ Data string } `json:"message"`
		}
		body, _ := io.ReadAll(req.Body)
		if json.Unmarshal(body, &env) != nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		raw, _ := base64.StdEncoding.DecodeString(env.Message.Data)
		rec, rej := record.ParseRecord(raw, record.DefaultLimits())
		if rej != nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if _, err := pool.Exec(req.Context(), insert, values(&rec)...); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	return httpRun(r, srv.URL, data, *clients)
}

// httpRun posts one envelope per record with `clients` connections and
// measures the time to each answer. The load generator shares the machine
// with the function and the database, so by default it is a lean one (like
// wrk: one keep-alive connection per client, requests pre-serialised, the
// status line parsed by hand), which leaves the CPU to what is measured;
// -nethttp uses Go's client instead.
func httpRun(r result, endpoint string, data [][]byte, clients int) (result, error) {
	if !*netHTTP {
		return leanRun(r, strings.TrimPrefix(endpoint, "http://"), data, clients)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	defer tr.CloseIdleConnections()
	bodies := make([]string, len(data))
	for i, d := range data {
		bodies[i] = envelope(fmt.Sprint(i), d)
	}
	start := time.Now()
	lat, err := drive(len(bodies), clients, func(i int) (int, error) {
		resp, err := client.Post(endpoint, "application/json", strings.NewReader(bodies[i]))
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	})
	r.elapsed = time.Since(start)
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r, err
}

func leanRun(r result, addr string, data [][]byte, clients int) (result, error) {
	reqs := make([][]byte, len(data))
	for i, d := range data {
		body := envelope(fmt.Sprint(i), d)
		reqs[i] = fmt.Appendf(nil, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body)
	}
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
		next <- i
	}
	close(next)
	wg.Wait()
	r.elapsed = time.Since(start)
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
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

// drive runs fn for 0..n-1 with `workers` in flight; every answer must be 204.
func drive(n, workers int, fn func(i int) (int, error)) ([]time.Duration, error) {
	var mu sync.Mutex
	var firstErr error
	lat := make([]time.Duration, 0, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				code, err := fn(i)
				d := time.Since(t0)
				mu.Lock()
				if err == nil && code != http.StatusNoContent {
					err = fmt.Errorf("delivery %d answered %d", i, code)
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return lat, firstErr
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
