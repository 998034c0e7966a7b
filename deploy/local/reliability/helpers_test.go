//go:build reliability

package reliability

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/pushrelay"
)

// Environment of the private clusters: a superuser URL and a data
// directory (for the restart script) for each database the suite runs on.
const (
	envServer   = "RELIABILITY_TIMESCALEDB_URL"
	envData     = "RELIABILITY_TSDB_DATA"
	envPGServer = "RELIABILITY_POSTGRES_URL"
	envPGData   = "RELIABILITY_PG_DATA"
)

// target is one private cluster the suite runs on.
type target struct {
	name   string // subtest name: timescaledb or postgres
	server string // superuser URL
	data   string // data directory, for restart
	script string // deploy/local script that manages it
	env    func(port, data string) []string
}

var targets = []struct {
	target
	serverVar, dataVar string
}{
	{target{name: "timescaledb", script: "timescaledb.sh", env: func(port, data string) []string {
		return []string{"TSDB_PORT=" + port, "TSDB_DATA=" + data}
	}}, envServer, envData},
	{target{name: "postgres", script: "postgres.sh", env: func(port, data string) []string {
		return []string{"PG_PORT=" + port, "PG_DATA_DIR=" + data}
	}}, envPGServer, envPGData},
}

// each runs fn as a subtest on every private cluster, one after the
// other: TimescaleDB and plain PostgreSQL (what Cloud SQL runs).
func each(t *testing.T, fn func(t *testing.T, tg *target)) {
	t.Helper()
	for _, c := range targets {
		t.Run(c.name, func(t *testing.T) {
			tg := c.target
			tg.server = require(t, c.serverVar)
			tg.data = require(t, c.dataVar)
			fn(t, &tg)
		})
	}
}

// eachParallel is each with the databases at once, for a test that
// mostly waits (the machine has room for two of it).
func eachParallel(t *testing.T, fn func(t *testing.T, tg *target)) {
	t.Helper()
	each(t, func(t *testing.T, tg *target) {
		t.Parallel()
		fn(t, tg)
	})
}

// require returns the value of an environment variable, skipping the test
// when it is unset, or failing it under CI=true.
func require(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set, and CI=true forbids skipping the reliability suite (make reliability sets it)", name)
		}
		t.Skipf("%s is not set; run `make reliability`", name)
	}
	return v
}

var (
	buildOnce sync.Once
	binaries  map[string]string
	buildErr  error
)

// binary returns the path of a function's command, built once per run.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "apigee-reliability-bin-")
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		binaries, buildErr = stack.Build(ctx, dir, map[string]string{
			"ingest": "./functions/ingest/cmd/ingest",
			"rotate": "./functions/rotate/cmd/rotate",
			"rollup": "./functions/rollup/cmd/rollup",
		})
	})
	if buildErr != nil {
		t.Fatalf("build functions: %v", buildErr)
	}
	bin, ok := binaries[name]
	if !ok {
		t.Fatalf("no binary %q", name)
	}
	return bin
}

// harness is one test's stack: a fresh database on the private cluster
// with a login in apigee_ingest, pstest with a topic and a subscription,
// and a generator of Apigee records.
type harness struct {
	tg        *target
	db        *stack.Database
	ps        *stack.PubSub
	topic     string
	sub       string
	ingestDSN string
	genMu     sync.Mutex // the generator is not safe for concurrent use
	gen       *simulator.Generator
}

func newHarness(t *testing.T, tg *target) *harness {
	t.Helper()
	server := tg.server
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	suffix := stack.RandomSuffix(4)
	db, err := stack.CreateDatabase(ctx, server, "reliability_"+suffix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(context.Background()); err != nil {
			t.Logf("drop database: %v", err)
		}
	})
	role := "rel_ingest_" + suffix
	dsn, err := db.Login(ctx, role, stack.RandomSuffix(16), "apigee_ingest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.DropRole(context.Background(), role) })

	ps, err := stack.StartPubSub(ctx, "reliability")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ps.Close)
	topic, err := ps.Topic(ctx, "apigee-calls")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ps.Subscription(ctx, "ingest-push", topic)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := simulator.NewGenerator(simulator.GeneratorConfig{Seed: uint64(time.Now().UnixNano()), RunID: suffix})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{tg: tg, db: db, ps: ps, topic: topic, sub: sub, ingestDSN: dsn, gen: gen}
}

// calls renders n good records with event times spread over the last hour.
func (h *harness) calls(t *testing.T, n int) []simulator.Message {
	t.Helper()
	return h.callsEnding(t, n, time.Now().Add(-time.Minute))
}

// callsEnding renders n good records with event times spread over the 50
// minutes before end.
func (h *harness) callsEnding(t *testing.T, n int, end time.Time) []simulator.Message {
	t.Helper()
	h.genMu.Lock()
	defer h.genMu.Unlock()
	out := make([]simulator.Message, n)
	for i := range out {
		at := end.Add(-time.Duration(float64(50*time.Minute) * float64(n-i) / float64(n)))
		m, err := h.gen.Call(at)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = m
	}
	return out
}

// published is a message and the ID Pub/Sub gave it.
type published struct {
	id  string
	msg simulator.Message
}

// publish publishes msgs at about rate per second (0: as fast as the
// client goes) and returns them with their Pub/Sub IDs once all are
// acknowledged by the server. It runs in the caller's goroutine.
func (h *harness) publish(ctx context.Context, topic string, msgs []simulator.Message, rate float64) ([]published, error) {
	pub := h.ps.Client.Publisher(topic)
	defer pub.Stop()
	results := make([]*pubsub.PublishResult, len(msgs))
	start := time.Now()
	for i, m := range msgs {
		if rate > 0 {
			if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
		}
		results[i] = pub.Publish(ctx, &pubsub.Message{Data: m.Data, Attributes: m.Attributes})
	}
	out := make([]published, len(msgs))
	for i, r := range results {
		id, err := r.Get(ctx)
		if err != nil {
			return nil, fmt.Errorf("publish %d: %w", i, err)
		}
		out[i] = published{id: id, msg: msgs[i]}
	}
	return out, nil
}

// publishAsync is publish in the background; wait returns its result.
func (h *harness) publishAsync(t *testing.T, topic string, msgs []simulator.Message, rate float64) (wait func() []published) {
	t.Helper()
	type res struct {
		p   []published
		err error
	}
	ch := make(chan res, 1)
	go func() {
		p, err := h.publish(context.Background(), topic, msgs, rate)
		ch <- res{p, err}
	}()
	return func() []published {
		t.Helper()
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.p
	}
}

// startIngest starts an ingest process on a free port, its log shown if the
// test fails; it returns the port and log too, for a successor to share.
func (h *harness) startIngest(t *testing.T, env ...string) (p *stack.Process, port int, logs *stack.SyncBuffer) {
	t.Helper()
	logs = &stack.SyncBuffer{}
	dumpOnFailure(t, "ingest", logs)
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return h.ingestProcess(t, port, logs, env...), port, logs
}

// ingestProcess starts the ingest function as a child process on port,
// logging in as the harness's ingest login unless env sets DB_SECRET, with
// extra environment.
func (h *harness) ingestProcess(t *testing.T, port int, logs *stack.SyncBuffer, env ...string) *stack.Process {
	t.Helper()
	var base []string
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "DB_SECRET=") }) {
		base = append(base, "DATABASE_URL="+h.ingestDSN)
	}
	base = append(base,
		"DB_APPLICATION_NAME=reliability-ingest",
		"INGEST_REQUEST_TIMEOUT=5s",
		"DB_CONNECT_TIMEOUT=2s",
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := stack.StartProcess(ctx, "ingest", binary(t, "ingest"), port, append(base, env...), logs)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(logs.String(), 4000))
	}
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	return p
}

// pushDeadline is the relays' acknowledgement deadline, the push
// subscription's: an answer later than this is no answer.
const pushDeadline = 10 * time.Second

// relay starts a push relay from sub to endpoint with quick retries and a
// recorder of every attempt; tweak adjusts the configuration.
func (h *harness) relay(t *testing.T, sub, endpoint string, tweak func(*pushrelay.Config)) (*stack.Relay, *stack.Recorder) {
	t.Helper()
	rec := stack.NewRecorder(nil)
	cfg := pushrelay.Config{
		Client:       h.ps.Client,
		Subscription: sub,
		Endpoint:     endpoint,
		AckDeadline:  pushDeadline,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   time.Second,
		MaxInFlight:  200,
		PollInterval: 5 * time.Millisecond,
		HTTPClient:   rec.Client(),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	r, err := stack.StartRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(15 * time.Second); err != nil {
			t.Errorf("stop relay: %v", err)
		}
	})
	return r, rec
}

// waitAcked waits until the relay acknowledged n messages.
func waitAcked(t *testing.T, r *stack.Relay, n int64, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := r.WaitFor(ctx, func(s pushrelay.Stats) bool { return s.Acked+s.DeadLettered >= n }); err != nil {
		t.Fatal(err)
	}
}

// assertStoredOnce checks that api_calls holds exactly the records of
// msgs, each once.
func (h *harness) assertStoredOnce(t *testing.T, msgs []simulator.Message) {
	t.Helper()
	ids := make([]string, 0, len(msgs))
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.Call != nil && !seen[m.Call.MessageID] {
			seen[m.Call.MessageID] = true
			ids = append(ids, m.Call.MessageID)
		}
	}
	ctx := context.Background()
	var rows, distinct, missing int64
	err := h.db.Admin.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM apigee.api_calls),
		       (SELECT count(DISTINCT message_id) FROM apigee.api_calls),
		       (SELECT count(*) FROM unnest($1::text[]) AS w(id)
		        WHERE NOT EXISTS (SELECT 1 FROM apigee.api_calls c WHERE c.message_id = w.id))`, ids).Scan(&rows, &distinct, &missing)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || rows != int64(len(ids)) || distinct != rows {
		t.Fatalf("api_calls: %d rows, %d distinct message_ids, %d of %d records missing; want each record exactly once",
			rows, distinct, missing, len(ids))
	}
}

// count runs a one-integer query on the harness database.
func (h *harness) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	n, err := h.db.Count(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dumpOnFailure logs the tail of a process log if the test failed; with
// RELIABILITY_LOGS=DIR every process log is also written to DIR.
func dumpOnFailure(t *testing.T, name string, logs *stack.SyncBuffer) {
	t.Cleanup(func() {
		if dir := os.Getenv("RELIABILITY_LOGS"); dir != "" {
			path := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name+".log")
			if err := os.WriteFile(path, []byte(logs.String()), 0o644); err != nil {
				t.Logf("write %s: %v", path, err)
			}
		}
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, tail(logs.String(), 6000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// restartCluster restarts the private cluster with the project's script,
// as an operator (or a managed service's maintenance) would.
func restartCluster(t *testing.T, tg *target) {
	t.Helper()
	out := clusterCommand(t, tg, "restart")
	if !strings.Contains(out, "server started") {
		t.Logf("restart output:\n%s", out)
	}
}

// clusterCommand runs the cluster's script with action (restart, down,
// up) and returns its output.
func clusterCommand(t *testing.T, tg *target, action string) string {
	t.Helper()
	u, err := url.Parse(tg.server)
	if err != nil {
		t.Fatal(err)
	}
	root, err := stack.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "deploy", "local", tg.script)
	out, err := runCommand(script, tg.env(u.Port(), tg.data), action)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tg.script, action, err, out)
	}
	return out
}

// runCommand runs a command with extra environment and returns its
// combined output.
func runCommand(name string, env []string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// transportErrors counts failed requests by error text.
func transportErrors(rec *stack.Recorder) map[string]int {
	out := map[string]int{}
	for _, as := range rec.All() {
		for _, a := range as {
			if a.Err != "" {
				out[a.Err]++
			}
		}
	}
	return out
}

// summarize shortens error texts to their last clause (the address and
// operation vary), for logging counts.
func summarize(errs map[string]int) map[string]int {
	out := map[string]int{}
	for e, n := range errs {
		if i := strings.LastIndex(e, ": "); i >= 0 {
			e = e[i+2:]
		}
		out[e] += n
	}
	return out
}

// answers summarizes every attempt a recorder saw: the slowest answer,
// the attempts that got none (refused, or past the deadline), and the
// non-ack answers.
type answers struct {
	slowest  time.Duration
	timeouts int
	nonAck   int
}

func answered(rec *stack.Recorder) answers {
	var a answers
	for _, as := range rec.All() {
		for _, at := range as {
			a.slowest = max(a.slowest, at.Took)
			switch {
			case at.Status == 0:
				a.timeouts++
			case !at.Acked():
				a.nonAck++
			}
		}
	}
	return a
}

// alive fails the test if the process has exited.
func alive(t *testing.T, p *stack.Process) {
	t.Helper()
	select {
	case <-p.Done():
		t.Fatalf("%s exited: %v", p.Name, p.ExitErr())
	default:
	}
}
