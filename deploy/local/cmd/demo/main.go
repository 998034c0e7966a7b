// Command demo runs the whole pipeline on one machine, with no cloud
// account, in about a minute (`make demo`):
//
//	Apigee traffic simulator ─publish─▶ Pub/Sub (pstest) ─push relay, OIDC─▶ ingest ─COPY─▶ TimescaleDB
//	                                   Cloud Scheduler (this command) ─▶ rollup, rotate ─▶ TimescaleDB, Secret Manager
//
// It creates (or migrates) a database, the logins the functions use and an
// empty credential secret in a local Secret Manager; builds and starts the
// rollup and rotate functions as child processes; serves ingest in process;
// relays the subscription to ingest like a Pub/Sub push subscription with
// an OIDC service account; publishes simulated Apigee traffic; calls
// rollup every few seconds and rotate once mid-run, as Cloud Scheduler
// would; and ends with a report, also written as a self-contained HTML file.
//
// Time is compressed: the run covers -span of event time (default 90
// minutes) in -duration (default 35 s), and a whole day's traffic shape.
// The rollup's anomaly detection judges a minute only once the rollups
// before it are done, so the demo throttles each rollup run to a few
// minutes of rollups (REFRESH_BATCH_MINUTES, RUN_BUDGET) — fewer than the
// simulated minutes between two calls — and the judgement stays behind the
// simulated present as it stays behind the real one in production; once
// the traffic stops, the scheduler keeps calling until the rollups caught up.
//
// Why ingest runs in process: it verifies push tokens, and the deployed
// command always fetches Google's signing keys; in process, its verifier
// is handed the local signer's keys. Rollup and rotate need nothing of the
// kind and run as the built commands.
//
// The database: with DATABASE_URL (an admin URL of any TimescaleDB ≥ 2.13
// or PostgreSQL ≥ 14) it is migrated and used as it is; otherwise -server
// (a superuser URL, default the local TimescaleDB of deploy/local) gets a
// fresh database apigee_demo, kept afterwards for exploring.
//
// The exit status is 1 when a check of the report fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/pushrelay"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/functions/rollup"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/privacy"
	"apigee-timescale/shared/pushauth"
)

const (
	project        = "apigee-demo"
	pushAccount    = "pubsub-push@apigee-demo.iam.gserviceaccount.com"
	demoDatabase   = "apigee_demo"
	rotateRole     = "apigee_demo_rotate"
	rollupRole     = "apigee_demo_rollup"
	scheduleJobRun = "rollup-every-minute"
	scheduleJobRot = "rotate-ingest-credentials"
	demoPrivacy    = "client_ip=truncate,forwarded_client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=hmac"
)

type options struct {
	server       string
	rate         float64
	duration     time.Duration
	span         time.Duration
	seed         uint64
	rollupEvery  time.Duration
	batchMinutes int
	report       string
	logDir       string
	privacy      string
}

func main() {
	var o options
	flag.StringVar(&o.server, "server", "", "superuser URL of the server to create database "+demoDatabase+" on (default: deploy/local/timescaledb.sh url; ignored when DATABASE_URL is set)")
	flag.Float64Var(&o.rate, "rate", 600, "mean records per second (the diurnal shape varies it from about half to twice that)")
	flag.DurationVar(&o.duration, "duration", 35*time.Second, "how long the simulator publishes")
	flag.DurationVar(&o.span, "span", 90*time.Minute, "event time covered by the run")
	flag.Uint64Var(&o.seed, "seed", 0, "traffic seed (0: random)")
	flag.DurationVar(&o.rollupEvery, "rollup-every", 2*time.Second, "how often the scheduler calls rollup")
	flag.IntVar(&o.batchMinutes, "rollup-minutes", 0, "minutes of rollups per run during the traffic (0: fewer than the simulated minutes between two calls)")
	flag.StringVar(&o.report, "report", "demo-report.html", "where to write the HTML report")
	flag.StringVar(&o.privacy, "privacy", demoPrivacy, "INGEST_PRIVACY of the demo's ingest, as new deployments have it (empty: personal fields stored in clear); INGEST_PRIVACY in the environment takes precedence")
	flag.StringVar(&o.logDir, "logs", "", "directory for the functions' logs (default: a new temporary directory)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// demo holds the running stack.
type demo struct {
	o      options
	out    io.Writer
	tty    bool
	logDir string
	begin  time.Time

	db       *stack.Database
	ps       *stack.PubSub
	sm       *stack.SecretManager
	secret   string
	signer   *stack.Signer
	ingest   *stack.Ingest
	ingestDB *dbconn.DB
	relay    *stack.Relay
	rec      *stack.Recorder
	rotate   *stack.Process
	rollup   *stack.Process
	sim      *simulator.Simulator
	runStart time.Time // wall time the traffic started; rejects and batches are counted from it

	lastProgress time.Time

	mu         sync.Mutex
	rotations  []rotation
	rollupRuns []rollup.Summary
	rollupErrs []string
	closers    []func()
	privacy    privacy.Policy // what ingest applies
}

type rotation struct {
	At      time.Time
	Summary rotate.Summary
	// FailedBefore is the relay's failed-attempt count when it ran.
	FailedBefore int64
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.1fs] %s\n", time.Since(d.begin).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) onClose(f func()) { d.closers = append(d.closers, f) }

func run(ctx context.Context, o options, out io.Writer) (bool, error) {
	d := &demo{o: o, out: out, begin: time.Now()}
	if f, ok := out.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			d.tty = true
		}
	}
	defer func() {
		for i := len(d.closers) - 1; i >= 0; i-- {
			d.closers[i]()
		}
	}()
	if err := d.setup(ctx); err != nil {
		return false, err
	}
	if err := d.traffic(ctx); err != nil {
		return false, err
	}
	if err := d.settle(ctx); err != nil {
		return false, err
	}
	rep, err := d.collect(ctx)
	if err != nil {
		return false, err
	}
	rep.write(out)
	if err := writeHTML(o.report, rep); err != nil {
		return false, err
	}
	d.step("HTML report: %s", o.report)
	d.step("functions' logs: %s", d.logDir)
	if os.Getenv("DATABASE_URL") == "" {
		u, _ := url.Parse(d.db.URL)
		u.User = url.User(u.User.Username())
		d.step("the data stays in database %s: psql %q (password of the local server: see deploy/local)", d.db.Name, u.String())
	}
	return rep.ok(), nil
}

// setup brings the stack up: database, logins, Secret Manager, Pub/Sub,
// the functions and the relay.
func (d *demo) setup(ctx context.Context) error {
	var err error
	d.logDir = d.o.logDir
	if d.logDir == "" {
		if d.logDir, err = os.MkdirTemp("", "apigee-demo-logs-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(d.logDir, 0o755); err != nil {
		return err
	}

	// Link the functions while the database is prepared.
	type built struct {
		bins map[string]string
		err  error
	}
	builds := make(chan built, 1)
	go func() {
		bins, err := stack.Build(ctx, filepath.Join(d.logDir, "bin"), map[string]string{
			"rollup": "./functions/rollup/cmd/rollup",
			"rotate": "./functions/rotate/cmd/rotate",
		})
		builds <- built{bins, err}
	}()

	if admin := os.Getenv("DATABASE_URL"); admin != "" {
		d.step("database: migrating DATABASE_URL")
		if d.db, err = stack.OpenDatabase(ctx, admin); err != nil {
			return err
		}
	} else {
		server := d.o.server
		if server == "" {
			root, err := stack.ModuleRoot()
			if err != nil {
				return err
			}
			b, err := exec.CommandContext(ctx, filepath.Join(root, "deploy", "local", "timescaledb.sh"), "url").Output()
			if err != nil {
				return fmt.Errorf("local TimescaleDB url: %w", err)
			}
			server = strings.TrimSpace(string(b))
		}
		d.step("database: creating %s and applying the migrations", demoDatabase)
		if d.db, err = stack.CreateDatabase(ctx, server, demoDatabase); err != nil {
			return fmt.Errorf("%w (is the local TimescaleDB up? deploy/local/timescaledb.sh up)", err)
		}
	}
	d.onClose(func() { d.db.Admin.Close() })
	var storage string
	_ = d.db.Admin.QueryRow(ctx, "SELECT value FROM apigee.settings WHERE key = 'storage'").Scan(&storage)

	rotDSN, err := d.db.Login(ctx, rotateRole, stack.RandomSuffix(16), "apigee_rotate")
	if err != nil {
		return err
	}
	rollDSN, err := d.db.Login(ctx, rollupRole, stack.RandomSuffix(16), "apigee_rollup")
	if err != nil {
		return err
	}
	d.step("database: %s storage; logins %s (apigee_rotate), %s (apigee_rollup); ingest logs in as apigee_ingest_a/_b, passworded by rotate",
		storage, rotateRole, rollupRole)

	if d.sm, err = stack.StartSecretManager(); err != nil {
		return err
	}
	d.onClose(d.sm.Stop)
	if d.secret, err = d.sm.CreateSecret(ctx, project, "ingest-db"); err != nil {
		return err
	}
	if d.ps, err = stack.StartPubSub(ctx, project); err != nil {
		return err
	}
	d.onClose(d.ps.Close)
	topic, err := d.ps.Topic(ctx, "apigee-calls")
	if err != nil {
		return err
	}
	sub, err := d.ps.Subscription(ctx, "ingest-push", topic)
	if err != nil {
		return err
	}
	dlq, err := d.ps.Topic(ctx, "apigee-calls-dead-letter")
	if err != nil {
		return err
	}
	d.step("Secret Manager (gRPC %s): empty secret %s; Pub/Sub (pstest %s): %s → %s, dead letters to %s",
		d.sm.Addr, d.secret, d.ps.Addr(), topic, sub, dlq)

	b := <-builds
	if b.err != nil {
		return b.err
	}
	d.step("built rollup and rotate")

	// rotate: bootstrap the empty secret (the first version).
	u, err := url.Parse(d.db.URL)
	if err != nil {
		return err
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	sslmode := u.Query().Get("sslmode")
	if d.rotate, err = d.startProcess(ctx, "rotate", b.bins["rotate"], []string{
		"DATABASE_URL=" + rotDSN,
		"SECRET_MANAGER_ENDPOINT=" + d.sm.Addr,
		"ROTATE_SECRET=" + d.secret,
		"ROTATE_MIN_INTERVAL=0s",
		"ROTATE_DB_HOST=" + u.Hostname(),
		"ROTATE_DB_PORT=" + port,
		"ROTATE_DB_NAME=" + d.db.Name,
		"ROTATE_DB_SSLMODE=" + sslmode,
	}); err != nil {
		return err
	}
	if err := d.rotateNow(ctx); err != nil {
		return err
	}

	// ingest, in process, verifying push tokens against the local signer.
	if d.signer, err = stack.NewSigner(); err != nil {
		return err
	}
	ingPort, err := stack.FreePort()
	if err != nil {
		return err
	}
	endpoint := fmt.Sprintf("http://127.0.0.1:%d/", ingPort)
	verifier, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: endpoint, ServiceAccount: pushAccount, HTTPClient: d.signer.HTTPClient()})
	if err != nil {
		return err
	}
	if d.ingestDB, err = dbconn.Open(ctx, dbconn.Config{
		DBSecret:              d.secret,
		SecretManagerEndpoint: d.sm.Addr,
		MaxConns:              8,
		// Connections are renewed often, so new ones keep reading the
		// credentials as rotations go.
		MaxConnLifetime: 10 * time.Second,
		ApplicationName: "apigee-ingest",
	}); err != nil {
		return err
	}
	d.onClose(d.ingestDB.Close)
	cfg, err := ingest.ConfigFromEnv()
	if err != nil {
		return err
	}
	cfg.PushAudience, cfg.PushServiceAccount = endpoint, pushAccount
	pz, err := d.setupPrivacy(ctx, &cfg)
	if err != nil {
		return err
	}
	ingLog, err := os.Create(filepath.Join(d.logDir, "ingest.log"))
	if err != nil {
		return err
	}
	d.onClose(func() { _ = ingLog.Close() })
	if d.ingest, err = stack.ServeIngest(cfg, ingest.Deps{DB: d.ingestDB, Verifier: verifier, Privacy: pz, Logger: logging.New(ingLog, slog.LevelInfo)},
		fmt.Sprintf("127.0.0.1:%d", ingPort)); err != nil {
		return err
	}
	d.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.ingest.Close(ctx)
	})
	d.step("ingest: serving %s in process; credentials from %s (DB_SECRET); push tokens must be for %s", endpoint, d.secret, pushAccount)

	// The push subscription, with an OIDC service account and a
	// dead-letter policy. Pub/Sub's backoff starts at 10s; compressed here.
	d.rec = stack.NewRecorder(nil)
	if d.relay, err = stack.StartRelay(pushrelay.Config{
		Client:              d.ps.Client,
		Subscription:        sub,
		Endpoint:            endpoint,
		AckDeadline:         10 * time.Second,
		MinBackoff:          250 * time.Millisecond,
		MaxBackoff:          5 * time.Second,
		DeadLetterTopic:     dlq,
		MaxDeliveryAttempts: 5,
		MaxInFlight:         200,
		PollInterval:        10 * time.Millisecond,
		TokenSource:         d.signer.TokenSource(endpoint, pushAccount, time.Hour),
		HTTPClient:          d.rec.Client(),
	}); err != nil {
		return err
	}
	d.onClose(func() { _ = d.relay.Stop(15 * time.Second) })
	d.step("push relay: %s → ingest, wrapped envelopes, OIDC tokens for %s, dead-letter after 5 attempts", sub, pushAccount)

	// rollup, throttled to the simulated clock (see the package comment).
	if d.o.batchMinutes == 0 {
		simMinutesPerCall := d.o.span.Minutes() / d.o.duration.Seconds() * d.o.rollupEvery.Seconds()
		d.o.batchMinutes = max(1, int(simMinutesPerCall*0.85))
	}
	if d.rollup, err = d.startProcess(ctx, "rollup", b.bins["rollup"], []string{
		"DATABASE_URL=" + rollDSN,
		fmt.Sprintf("REFRESH_BATCH_MINUTES=%d", d.o.batchMinutes),
		"RUN_BUDGET=1ms",
		// The demo's traffic is a few hundred calls per simulated minute:
		// judge proxy-minutes from 10 calls (production default 20).
		"ANOMALY_MIN_CALLS=10",
		"ANOMALY_LOOKBACK=" + (d.o.span + 30*time.Minute).String(),
	}); err != nil {
		return err
	}
	d.step("rollup: %s, %d minutes of rollups per run while traffic flows", d.rollup.URL, d.o.batchMinutes)
	return nil
}

func (d *demo) startProcess(ctx context.Context, name, bin string, env []string) (*stack.Process, error) {
	port, err := stack.FreePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(d.logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	p, err := stack.StartProcess(ctx, name, bin, port, env, &lockedWriter{w: logf})
	if err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	d.onClose(func() { _ = p.Stop(10 * time.Second); _ = logf.Close() })
	return p, nil
}

// lockedWriter serialises a child's stdout and stderr into one file.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// rotateNow calls rotate as its scheduler job would and records the run.
func (d *demo) rotateNow(ctx context.Context) error {
	var failed int64
	if d.rec != nil {
		failed = d.rec.Failed()
	}
	var sum rotate.Summary
	at := time.Now()
	if err := stack.Trigger(ctx, nil, d.rotate.URL, scheduleJobRot, nil, &sum); err != nil {
		return err
	}
	if sum.Status != rotate.StatusRotated {
		return fmt.Errorf("rotation did not rotate: %+v", sum)
	}
	d.mu.Lock()
	d.rotations = append(d.rotations, rotation{At: at, Summary: sum, FailedBefore: failed})
	first := len(d.rotations) == 1
	d.mu.Unlock()
	if first {
		d.step("rotate: first run filled the secret: %s holds %s", sum.NewVersion, sum.RotatedLogin)
	} else {
		d.clearLine()
		d.step("rotate: %s re-passworded, %s added (%s stays valid), %d versions disabled",
			sum.RotatedLogin, sum.NewVersion, sum.PreviousVersion, len(sum.DisabledVersions))
	}
	return nil
}

// rollupNow calls rollup as Cloud Scheduler would.
func (d *demo) rollupNow(ctx context.Context) (rollup.Summary, error) {
	var sum rollup.Summary
	err := stack.Trigger(ctx, nil, d.rollup.URL, scheduleJobRun, nil, &sum)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.rollupErrs = append(d.rollupErrs, err.Error())
		return sum, err
	}
	d.rollupRuns = append(d.rollupRuns, sum)
	return sum, nil
}

// traffic runs the simulator with the scheduler beside it.
func (d *demo) traffic(ctx context.Context) error {
	var err error
	d.sim, err = simulator.New(simulator.Config{
		Rate:     d.o.rate,
		Duration: d.o.duration,
		Span:     d.o.span,
		Seed:     d.o.seed,
		Progress: d.progress,
	})
	if err != nil {
		return err
	}
	from, to := d.sim.Window()
	var judged *time.Time
	_ = d.db.Admin.QueryRow(ctx, "SELECT anomalies_evaluated_until FROM apigee.rollup_state").Scan(&judged)
	if judged != nil && judged.After(from) {
		d.step("warning: this database's anomaly detection already judged event time up to %s (an earlier run);"+
			" minutes before that are not judged again, so a spike there goes unflagged: use a fresh database or wait %s",
			judged.UTC().Format("15:04"), judged.Sub(from).Round(time.Minute))
	}
	d.step("simulator: run %s, %.0f records/s for %s covering event time %s–%s UTC (a day's traffic shape)",
		d.sim.RunID(), d.o.rate, d.o.duration, from.Format("15:04"), to.Format("15:04"))
	for _, s := range d.sim.Spikes() {
		d.step("  injected: %s", s)
	}

	pub := d.ps.Client.Publisher("apigee-calls")
	defer pub.Stop()
	d.runStart = time.Now()
	schedCtx, stopSched := context.WithCancel(ctx)
	var sched sync.WaitGroup
	sched.Add(1)
	go func() {
		defer sched.Done()
		d.schedule(schedCtx)
	}()
	_, err = d.sim.Run(ctx, pub)
	stopSched()
	sched.Wait()
	d.clearLine()
	if err != nil {
		return err
	}
	st := d.sim.Stats()
	d.step("simulator: done: %d published (%d calls, %d malformed, %d publisher retries), %d failed",
		st.Published, st.Calls, st.Malformed, st.Duplicates, st.Failed)
	return nil
}

// schedule is Cloud Scheduler: rollup every rollupEvery (from two periods
// in, when a few minutes of rollups are waiting), rotate once halfway.
func (d *demo) schedule(ctx context.Context) {
	rollTick := time.NewTicker(d.o.rollupEvery)
	defer rollTick.Stop()
	rotateAt := time.After(d.o.duration / 2)
	skip := 1
	for {
		select {
		case <-ctx.Done():
			return
		case <-rotateAt:
			if err := d.rotateNow(context.WithoutCancel(ctx)); err != nil {
				d.clearLine()
				d.step("rotate failed: %v", err)
			}
		case <-rollTick.C:
			if skip > 0 {
				skip--
				continue
			}
			// A call under way when the traffic stops is let finish.
			_, _ = d.rollupNow(context.WithoutCancel(ctx))
		}
	}
}

// progress prints the running counters: one rewritten line on a terminal,
// a line every five seconds otherwise.
func (d *demo) progress(st simulator.Stats) {
	if !d.tty && time.Since(d.lastProgress) < 5*time.Second {
		return
	}
	d.lastProgress = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var stored, rejected int64
	_ = d.db.Admin.QueryRow(ctx, `SELECT coalesce(sum(rows_inserted), 0), coalesce(sum(rows_rejected), 0)
		FROM apigee.ingest_batches WHERE committed_at >= $1`, d.runStart).Scan(&stored, &rejected)
	d.mu.Lock()
	runs, rots := len(d.rollupRuns), len(d.rotations)-1
	var anomalies int
	for _, r := range d.rollupRuns {
		anomalies += r.AnomaliesFound
	}
	d.mu.Unlock()
	rs := d.relay.Stats()
	line := fmt.Sprintf("sent %6d (%4.0f/s) · stored %6d · rejected %3d · in flight %3d · event time %s · rollup runs %2d · anomalies %d · rotations %d · failed deliveries %d",
		st.Sent, float64(st.Sent)/max(st.Elapsed.Seconds(), 0.001), stored, rejected, rs.InFlight,
		st.EventTime.UTC().Format("15:04"), runs, anomalies, rots, d.rec.Failed())
	if d.tty {
		fmt.Fprintf(d.out, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(d.out, line)
	}
}

func (d *demo) clearLine() {
	if d.tty {
		fmt.Fprint(d.out, "\r\033[K")
	}
}

// settle waits until every published message is acknowledged or
// dead-lettered, then lets the scheduler keep calling rollup until the
// rollups caught up and every settled minute is judged.
func (d *demo) settle(ctx context.Context) error {
	st := d.sim.Stats()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := d.relay.WaitFor(wctx, func(s pushrelay.Stats) bool { return s.Acked+s.DeadLettered >= st.Published }); err != nil {
		return fmt.Errorf("waiting for the relay to deliver everything: %w", err)
	}
	d.step("relay: all %d messages delivered", st.Published)
	for i := 0; ; i++ {
		sum, err := d.rollupNow(ctx)
		if err != nil {
			return err
		}
		if sum.PendingMinutes == 0 && i > 0 {
			break
		}
		if i > 200 {
			return errors.New("rollup did not catch up in 200 runs")
		}
	}
	d.mu.Lock()
	n := len(d.rollupRuns)
	d.mu.Unlock()
	d.step("rollup: caught up after %d runs", n)
	return nil
}
