package rotate_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/cloudsqlconn"
	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/jackc/pgx/v5"
	"google.golang.org/api/iterator"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/secrets"
)

const project = "projects/test-project"

// scheduler is the header Cloud Scheduler sets on its HTTP calls.
var scheduler = map[string]string{"X-CloudScheduler": "true"}

// fixture is one rotation setup: a fresh database with a private pair of
// login roles, the rotator logged in as a member of apigee_rotate, and an
// in-process Secret Manager holding an empty secret.
type fixture struct {
	db             *testkit.DB
	host, port     string
	sm             *secretmanagertest.Server
	smAddr         string
	client         *secretmanager.Client
	secret         string
	loginA, loginB string
	rotDB          *dbconn.DB
	logs           *stack.SyncBuffer
	svc            *rotate.Service

	mu        sync.Mutex
	passwords []string
	answers   []string
	// known holds the credentials of every version seen enabled, since a
	// disabled version's payload can no longer be read.
	known map[string]secrets.DBCredentials
}

// baseConfig is the Config tests start from: no minimum interval, so that
// rotations can follow each other at once.
func (f *fixture) baseConfig() rotate.Config {
	p := 0
	fmt.Sscan(f.port, &p)
	return rotate.Config{
		Secret:   f.secret,
		TTL:      time.Hour,
		Host:     f.host,
		Port:     p,
		Database: f.db.Name,
		SSLMode:  "disable",
	}
}

func newFixture(t *testing.T, kind testkit.Kind) *fixture {
	t.Helper()
	// Every test here proves that retired credentials stop logging in.
	testkit.RequirePasswordAuth(t, kind)
	ctx := context.Background()
	db := testkit.New(t, kind)
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{db: db, host: u.Hostname(), port: u.Port(), logs: &stack.SyncBuffer{}, known: map[string]secrets.DBCredentials{}}
	f.loginA, f.loginB = isolatedLogins(t, db)

	_, rotDSN := db.Login(t, "apigee_rotate")
	f.rotDB, err = dbconn.Open(ctx, dbconn.Config{DatabaseURL: rotDSN, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.rotDB.Close)

	srv, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	f.sm, f.smAddr = srv, addr
	f.client, err = secrets.NewClient(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.client.Close() })
	s, err := f.client.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{Parent: project, SecretId: "ingest-db", Secret: &secretmanagerpb.Secret{}})
	if err != nil {
		t.Fatal(err)
	}
	f.secret = s.GetName()

	f.svc = f.newService(t, nil, nil)
	// Registered last, so it runs first: every answer and log line is in.
	t.Cleanup(func() { f.checkNoLeaks(t) })
	return f
}

// newService builds a Service on the fixture's dependencies, rotating the
// fixture's logins and recording every password it generates.
func (f *fixture) newService(t testing.TB, tweak func(*rotate.Config), deps func(*rotate.Deps)) *rotate.Service {
	t.Helper()
	cfg := f.baseConfig()
	if tweak != nil {
		tweak(&cfg)
	}
	d := rotate.Deps{DB: f.rotDB, Secrets: f.client, Logger: logging.New(f.logs, slog.LevelDebug)}
	if deps != nil {
		deps(&d)
	}
	s, err := rotate.NewService(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	rotate.SetLogins(s, f.loginA, f.loginB)
	rotate.SetPasswordSource(s, func() (string, error) {
		p, err := rotate.NewPassword()
		f.mu.Lock()
		f.passwords = append(f.passwords, p)
		f.mu.Unlock()
		return p, err
	})
	return s
}

// isolatedLogins creates two login roles of the test's own, members of
// apigee_ingest, and lets apigee.set_login_password of this (throwaway)
// database re-password them instead of apigee_ingest_a/_b. The function is
// the migration's own, from pg_get_functiondef, with only the role list
// changed; the test fails if that list ever stops naming the logins the
// rotator uses in production.
func isolatedLogins(t *testing.T, db *testkit.DB) (a, b string) {
	t.Helper()
	ctx := context.Background()
	suffix := randHex(t)
	a, b = "t_rot_"+suffix+"_a", "t_rot_"+suffix+"_b"
	for _, r := range []string{a, b} {
		if _, err := db.Admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN IN ROLE %s", pgx.Identifier{r}.Sanitize(), rotate.IngestGroup)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx := context.Background()
			_, _ = db.Admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", r)
			_, _ = db.Admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{r}.Sanitize())
		})
	}
	var def string
	if err := db.Admin.QueryRow(ctx, "SELECT pg_get_functiondef('apigee.set_login_password(name, text, timestamptz)'::regprocedure)").Scan(&def); err != nil {
		t.Fatal(err)
	}
	prod := fmt.Sprintf("'%s', '%s'", rotate.LoginA, rotate.LoginB)
	if strings.Count(def, prod) != 1 {
		t.Fatalf("apigee.set_login_password does not accept exactly (%s):\n%s", prod, def)
	}
	if _, err := db.Admin.Exec(ctx, strings.Replace(def, prod, fmt.Sprintf("'%s', '%s'", a, b), 1)); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// post sends a request to svc's handler and returns the status code and the
// decoded summary; the raw answer is kept for the leak check.
func (f *fixture) post(t testing.TB, svc http.Handler, body string, hdr map[string]string) (int, rotate.Summary) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	svc.ServeHTTP(w, r)
	f.mu.Lock()
	f.answers = append(f.answers, w.Body.String())
	f.mu.Unlock()
	var sum rotate.Summary
	if err := json.Unmarshal(w.Body.Bytes(), &sum); err != nil {
		t.Errorf("answer %d is not a JSON summary: %q", w.Code, w.Body.String())
	}
	f.learn(t)
	return w.Code, sum
}

// rotate runs one scheduled rotation through the default service and
// requires it to succeed.
func (f *fixture) rotate(t testing.TB) rotate.Summary {
	t.Helper()
	code, sum := f.post(t, f.svc, "", scheduler)
	if code != http.StatusOK || sum.Status != rotate.StatusRotated {
		t.Fatalf("rotation answered %d %+v", code, sum)
	}
	return sum
}

// learn records the credentials of every enabled version not seen yet.
func (f *fixture) learn(t testing.TB) {
	t.Helper()
	for _, v := range f.versions(t) {
		f.mu.Lock()
		_, ok := f.known[v.GetName()]
		f.mu.Unlock()
		if ok || v.GetState() != secretmanagerpb.SecretVersion_ENABLED {
			continue
		}
		c, _, err := secrets.Read(context.Background(), f.client, v.GetName())
		if err != nil {
			t.Errorf("read %s: %v", v.GetName(), err)
			continue
		}
		f.mu.Lock()
		f.known[v.GetName()] = c
		f.mu.Unlock()
	}
}

// versions lists the secret's versions, newest first.
func (f *fixture) versions(t testing.TB) []*secretmanagerpb.SecretVersion {
	t.Helper()
	it := f.client.ListSecretVersions(context.Background(), &secretmanagerpb.ListSecretVersionsRequest{Parent: f.secret})
	var out []*secretmanagerpb.SecretVersion
	for {
		v, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out
		}
		if err != nil {
			t.Fatalf("list versions: %v", err)
		}
		out = append(out, v)
	}
}

func (f *fixture) creds(t testing.TB, version string) secrets.DBCredentials {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.known[version]
	if !ok {
		t.Fatalf("credentials of %s were never seen", version)
	}
	return c
}

// login connects with c as a consumer would and runs a query.
func (f *fixture) login(ctx context.Context, c secrets.DBCredentials) error {
	host := c.Host
	port := c.PortOrDefault()
	if host == "" { // written for the Cloud SQL connector
		host = f.host
		fmt.Sscan(f.port, &port)
	}
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s sslmode=disable connect_timeout=5", host, port, c.Database))
	if err != nil {
		return err
	}
	cc.User, cc.Password = c.Username, c.Password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// checkNewestWorks is the guarantee that holds at every moment, crashes
// included: the newest version is enabled and logs in.
func (f *fixture) checkNewestWorks(t testing.TB) *secretmanagerpb.SecretVersion {
	t.Helper()
	vs := f.versions(t)
	if len(vs) == 0 {
		t.Fatal("the secret has no versions")
	}
	n := vs[0]
	if n.GetState() != secretmanagerpb.SecretVersion_ENABLED {
		t.Fatalf("newest version %s is %s", n.GetName(), n.GetState())
	}
	c, _, err := secrets.Read(context.Background(), f.client, f.secret)
	if err != nil {
		t.Fatalf("read latest: %v", err)
	}
	if err := f.login(context.Background(), c); err != nil {
		t.Fatalf("newest version %s (%s) does not log in: %v", n.GetName(), c.Username, err)
	}
	return n
}

// checkConsistent is the state after a successful run: the newest two
// versions are enabled, name one login each and log in; every older one is
// disabled and its password rejected.
func (f *fixture) checkConsistent(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	f.checkNewestWorks(t)
	vs := f.versions(t)
	users := map[string]bool{}
	for i, v := range vs {
		c := f.creds(t, v.GetName())
		err := f.login(ctx, c)
		enabled := v.GetState() == secretmanagerpb.SecretVersion_ENABLED
		if i < 2 {
			users[c.Username] = true
			if !enabled || err != nil {
				t.Errorf("version %s (%s): %s, login error %v; want enabled and working", v.GetName(), c.Username, v.GetState(), err)
			}
			continue
		}
		if enabled || !dbconn.IsAuthError(err) {
			t.Errorf("version %s (%s): %s, login error %v; want disabled and rejected", v.GetName(), c.Username, v.GetState(), err)
		}
	}
	if len(vs) >= 2 && !(users[f.loginA] && users[f.loginB]) {
		t.Errorf("newest two versions log in as %v, want %s and %s", users, f.loginA, f.loginB)
	}
}

// checkNoLeaks looks for every generated password in every answer and log
// line.
func (f *fixture) checkNoLeaks(t testing.TB) {
	f.mu.Lock()
	defer f.mu.Unlock()
	logs := f.logs.String()
	all := strings.Join(f.answers, "\n")
	for _, p := range f.passwords {
		if strings.Contains(logs, p) {
			t.Errorf("a password appears in the logs")
		}
		if strings.Contains(all, p) {
			t.Errorf("a password appears in an answer")
		}
	}
	if len(f.passwords) > 0 && (logs == "" || all == "") {
		t.Errorf("leak check saw %d bytes of logs and %d of answers: nothing to check", len(logs), len(all))
	}
}

// wrapped builds a Pub/Sub push envelope.
func wrapped(id, data string, attrs map[string]string) string {
	b, _ := json.Marshal(map[string]any{
		"message": map[string]any{
			"data":        []byte(data),
			"messageId":   id,
			"publishTime": time.Now().UTC().Format(time.RFC3339Nano),
			"attributes":  attrs,
		},
		"subscription": "projects/test-project/subscriptions/sub",
	})
	return string(b)
}

func randHex(t testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// fakeDialer stands in for cloudsqlconn.Dialer, dialing the test server.
type fakeDialer struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (d *fakeDialer) Dial(ctx context.Context, instance string, _ ...cloudsqlconn.DialOption) (net.Conn, error) {
	d.mu.Lock()
	d.seen = append(d.seen, instance)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// tapProxy forwards TCP connections to target and records every byte in
// both directions.
type tapProxy struct {
	addr string
	seen stack.SyncBuffer
}

func newTapProxy(t testing.TB, target string) *tapProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tapProxy{addr: ln.Addr().String()}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			conns.Add(2)
			go func() { defer conns.Done(); io.Copy(io.MultiWriter(up, &p.seen), c); up.Close() }()
			go func() { defer conns.Done(); io.Copy(io.MultiWriter(c, &p.seen), up); c.Close() }()
		}
	}()
	return p
}
