package main

// The HTTP modes run the function under test and the load generator as two
// processes of this same binary (-role serve, -role load), so that each
// one's CPU is read from /proc on its own and the generator's work is not
// billed to the function.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/record"
)

// serve runs one server kind on $PORT until killed:
//
//	push   the real ingest function (function.Main, as functions/ingest/cmd/ingest)
//	floor  read the body, answer 204: the least any push function can do
//	floorwait  the floor, waiting floorWait before the 204
//	floorgroup  the floor, answering in groups floorWait after each group's first delivery
//	nodb   the ingest Service with a writer that stores nothing
//	nodbwait  nodb, its writer taking floorWait per batch as a commit would
//	naive  one autocommitted INSERT per message through a pgx pool
func serve(kind string) error {
	if path := os.Getenv(envProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if kind == "push" {
		if jwks := os.Getenv(envPushKeys); jwks != "" {
			// A Lazy like ingest's registered one (without its drain,
			// which a bench server stopped after its load does not need),
			// whose verifier fetches the stand-in signer's keys instead of
			// Google's.
			keys := pushauthtest.KeySetClient([]byte(jwks))
			svc := &function.Lazy[*ingest.Service]{Name: "ingest", Start: func(ctx context.Context, log *slog.Logger) (*ingest.Service, error) {
				return ingest.NewFromEnvWithKeys(ctx, log, keys)
			}}
			functions.HTTP(authTarget, svc.HTTP((*ingest.Service).ServeHTTP))
			return function.Main(authTarget)
		}
		return function.Main("Ingest")
	}
	var h http.Handler
	switch kind {
	case "floor":
		h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body) //nolint:errcheck // a floor, not a function
			w.WriteHeader(http.StatusNoContent)
		})
	case "floorwait":
		h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body) //nolint:errcheck // a floor, not a function
			time.Sleep(floorWait)
			w.WriteHeader(http.StatusNoContent)
		})
	case "floorgroup":
		var g answerGroups
		h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body) //nolint:errcheck // a floor, not a function
			<-g.join()
			w.WriteHeader(http.StatusNoContent)
		})
	case "nodb", "nodbwait":
		cfg, err := ingest.ConfigFromEnv()
		if err != nil {
			return err
		}
		cfg.TuneGC() // as the function's start does
		w := discard{}
		if kind == "nodbwait" {
			w.wait = floorWait
		}
		s, err := ingest.NewService(cfg, ingest.Deps{Writer: w})
		if err != nil {
			return err
		}
		h = s
	case "naive":
		pool, err := pgxpool.New(context.Background(), os.Getenv("DATABASE_URL"))
		if err != nil {
			return err
		}
		h = naiveHandler(pool)
	default:
		return fmt.Errorf("unknown server %q", kind)
	}
	// Stopped by the harness's interrupt, so that a CPU profile is written
	// (the deferred StopCPUProfile) as function.Main's own shutdown does.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: "127.0.0.1:" + os.Getenv("PORT"), Handler: h}
	go func() { <-ctx.Done(); srv.Close() }() //nolint:errcheck // exiting
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// answerGroups releases deliveries together, as a commit answers its
// batch: a group opens with its first delivery and is answered floorWait
// later, all at once.
type answerGroups struct {
	mu  sync.Mutex
	cur chan struct{}
}

func (g *answerGroups) join() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == nil {
		c := make(chan struct{})
		g.cur = c
		time.AfterFunc(floorWait, func() {
			g.mu.Lock()
			g.cur = nil
			g.mu.Unlock()
			close(c)
		})
	}
	return g.cur
}

// floorWait is (0c)'s wait: about the push path's median at 64 in flight
// (10.2 ms in the make bench runs of session 5).
const floorWait = 10 * time.Millisecond

// envProfile names the file a server process writes its CPU profile to
// (set by -cpuprofile); the profile ends when the server is stopped.
const envProfile = "BENCH_SERVER_CPUPROFILE"

// discard is a batch writer that stores nothing and reports every call
// inserted, after wait (nodbwait: the batches then form as they do while
// a database commits).
type discard struct{ wait time.Duration }

func (d discard) Write(_ context.Context, b *ingest.Batch) (ingest.Result, error) {
	time.Sleep(d.wait)
	return ingest.Result{Inserted: len(b.Calls), Rejected: len(b.Rejects)}, nil
}

// naiveHandler is the function people write first: one INSERT per message,
// autocommitted, as many at a time as requests arrive (the pool's default
// size bounds the connections).
func naiveHandler(pool *pgxpool.Pool) http.Handler {
	cols := strings.Join(copyCols, ", ")
	ph := make([]string, len(copyCols))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	insert := "INSERT INTO apigee.api_calls (" + cols + ") VALUES (" + strings.Join(ph, ", ") + ") ON CONFLICT DO NOTHING"
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
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
}

// Push authentication, as deployed (deploy.sh sets PUSH_AUDIENCE and
// PUSH_SERVICE_ACCOUNT): the harness signs one ID token with a stand-in
// key, the load generator sends it with every delivery, as Pub/Sub sends
// one token with every push of a time window (see shared/pushauth's
// verifiedTokens), and the function verifies it against the stand-in's
// key set (envPushKeys). Every mode's requests carry the token, the
// floors' too: they are what Pub/Sub sends. -serve-env
// PUSH_AUDIENCE=,PUSH_SERVICE_ACCOUNT= measures without verification.
const (
	envPushKeys  = "BENCH_PUSH_KEYS"  // the JWKS, to the server processes
	envPushToken = "BENCH_PUSH_TOKEN" // the token, to the load generators
	authTarget   = "IngestBenchAuth"
	pushAudience = "https://apigee-ingest-bench.a.run.app/"
	pushAccount  = "pubsub-push@bench.iam.gserviceaccount.com"
)

// pushToken is the bearer token every request carries (this process's
// environment: set by the harness for itself and its children).
var pushToken = os.Getenv(envPushToken)

// signPushToken makes the token and the servers' environment for it.
func signPushToken(ctx context.Context) ([]string, error) {
	signer, err := pushauthtest.New()
	if err != nil {
		return nil, err
	}
	// Longer than Google's hour, so that a long run (a large -msgs) does
	// not outlive it; the verifier re-checks it every verifiedFor anyway.
	tok, err := signer.TokenSource(pushAudience, pushAccount, 12*time.Hour)(ctx)
	if err != nil {
		return nil, err
	}
	pushToken = tok
	if err := os.Setenv(envPushToken, tok); err != nil {
		return nil, err
	}
	return []string{envPushKeys + "=" + string(signer.JWKS()), "PUSH_AUDIENCE=" + pushAudience, "PUSH_SERVICE_ACCOUNT=" + pushAccount}, nil
}

// cloudRunEnv is what Cloud Run sets in every container, besides PORT
// (https://cloud.google.com/run/docs/container-contract#env-vars), so that
// the function runs as deployed. It matters: with K_SERVICE set,
// functions-framework-go writes a newline to stdout and one to stderr
// after every request (its wrapHTTPFunction; kept on purpose upstream,
// GoogleCloudPlatform/functions-framework-go#157), two writes per
// delivery that a bench without it would not count. shared/function now
// clears it at start, so this guards against the writes coming back.
var cloudRunEnv = []string{"K_SERVICE=apigee-ingest", "K_REVISION=apigee-ingest-00001-bench", "K_CONFIGURATION=apigee-ingest"}

// nonBlankLines passes on w the lines written to it that are not empty.
type nonBlankLines struct {
	w       io.Writer
	partial []byte
}

func (n *nonBlankLines) Write(p []byte) (int, error) {
	n.partial = append(n.partial, p...)
	for {
		i := bytes.IndexByte(n.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		if i > 0 {
			if _, err := n.w.Write(n.partial[:i+1]); err != nil {
				return len(p), err
			}
		}
		n.partial = n.partial[i+1:]
	}
}

// flush passes on what is left, a last line without its newline (the
// end of a crash, say).
func (n *nonBlankLines) flush() {
	if len(n.partial) > 0 {
		n.w.Write(append(n.partial, '\n')) //nolint:errcheck // best effort
		n.partial = nil
	}
}

// server is a running -role serve process.
type server struct {
	cmd    *exec.Cmd
	addr   string
	stderr *nonBlankLines
	// cold is the time from starting the process to its first answer 204.
	cold time.Duration
}

// startServer starts a server process of kind on a free port, with env
// added to this process's environment, and waits for its first 204 to a
// warm-up delivery (push functions start lazily, on that delivery).
func startServer(kind string, env []string) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-role", "serve", "-serve", kind)
	cmd.Env = append(append(append(os.Environ(), env...), cloudRunEnv...), "PORT="+port)
	if *serveEnv != "" {
		cmd.Env = append(cmd.Env, strings.Split(*serveEnv, ",")...)
	}
	// Pipes, as Cloud Run's log collection reads a container's output: the
	// writes cost what they cost there (not /dev/null's nothing). stdout
	// is the function's JSON log, not shown; stderr is shown, less the
	// framework's blank lines.
	cmd.Stdout = io.Discard
	stderr := &nonBlankLines{w: os.Stderr}
	cmd.Stderr = stderr
	probe := []byte(request(addr, envelope("cold-start", makeRecordsPrefixed(1, "cold-"+randHex(4))[0])))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, addr: addr, stderr: stderr}
	for time.Since(start) < 30*time.Second {
		if conn, err := net.Dial("tcp", addr); err == nil {
			code, err := leanExchange(conn, bufio.NewReader(conn), probe)
			conn.Close()
			if err == nil && code == http.StatusNoContent {
				s.cold = time.Since(start)
				return s, nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("%s server: no 204 within 30 s", kind)
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func (s *server) peakRSS() int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt) //nolint:errcheck // killed below if it does not stop
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }() //nolint:errcheck // its exit status is not measured
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill() //nolint:errcheck // best effort
		<-done
	}
	s.stderr.flush() // Wait has returned: exec's copying is done
}

// loadResult is what a -role load process prints when it is done.
type loadResult struct {
	Elapsed, P50, P99 time.Duration
	Err               string
}

// load is a running -role load process: it builds its requests, says
// "ready", and sends them when told "go" on its standard input, so that
// the measured window holds only the deliveries.
type load struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startLoad(addr string, msgs, perMsg, clients, rate int) (*load, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-role", "load", "-addr", addr, "-msgs", fmt.Sprint(msgs),
		"-per-msg", fmt.Sprint(perMsg), "-clients", fmt.Sprint(clients), "-rate", fmt.Sprint(rate))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l := &load{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	if line, err := l.out.ReadString('\n'); err != nil || line != "ready\n" {
		cmd.Process.Kill() //nolint:errcheck // it failed already
		cmd.Wait()         //nolint:errcheck // reaped
		return nil, fmt.Errorf("load generator: %q %v", line, err)
	}
	return l, nil
}

// run sends the deliveries and waits for the generator's result.
func (l *load) run() (loadResult, error) {
	var res loadResult
	if _, err := io.WriteString(l.in, "go\n"); err != nil {
		return res, err
	}
	line, err := l.out.ReadString('\n')
	l.cmd.Wait() //nolint:errcheck // the result line says how it went
	if err != nil {
		return res, fmt.Errorf("load generator: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, fmt.Errorf("load generator: %w", err)
	}
	if res.Err != "" {
		return res, fmt.Errorf("load generator: %s", res.Err)
	}
	return res, nil
}

// generate is the -role load process.
func generate(addr string, msgs, perMsg, clients, rate int) error {
	bodies := make([][]byte, msgs)
	prefix := randHex(4)
	recs := makeRecordsPrefixed(msgs*perMsg, prefix)
	for i := range bodies {
		var b []byte
		for _, r := range recs[i*perMsg : (i+1)*perMsg] {
			b = append(append(b, r...), '\n')
		}
		if perMsg == 1 {
			b = recs[i]
		}
		bodies[i] = []byte(request(addr, envelope(fmt.Sprintf("%s-%d", prefix, i), b)))
	}
	recs = nil
	fmt.Println("ready")
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
		return fmt.Errorf("load: expected go, got %q %v", line, err)
	}
	r, err := leanRun(addr, bodies, clients, rate)
	if err != nil {
		r.Err = err.Error()
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	return nil
}

func request(addr, body string) string {
	auth := ""
	if pushToken != "" {
		auth = "Authorization: Bearer " + pushToken + "\r\n"
	}
	return fmt.Sprintf("POST / HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, auth, len(body), body)
}
