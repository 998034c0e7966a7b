package dbconn_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/cloudsqlconn"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/secrets"
)

const testSecret = "projects/test/secrets/db"

// testPostgresURL returns TEST_POSTGRES_URL, skipping when it is unset
// except under CI=true, where a missing database is a failure.
func testPostgresURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("TEST_POSTGRES_URL")
	if u == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatal("TEST_POSTGRES_URL is not set (required when CI=true)")
		}
		tb.Skip("TEST_POSTGRES_URL is not set; skipping tests that need PostgreSQL")
	}
	return u
}

func randomSuffix(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testRole creates a throwaway LOGIN role with password pw in the test
// cluster and returns its name, the superuser connection used to manage it,
// and the cluster's address as credentials lacking user and password.
func testRole(tb testing.TB, pw string) (string, *pgx.Conn, secrets.DBCredentials) {
	tb.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testPostgresURL(tb))
	if err != nil {
		tb.Fatalf("connect TEST_POSTGRES_URL: %v", err)
	}
	role := "dbconn_test_" + randomSuffix(tb)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, pw)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx := context.Background()
		_, _ = admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
		if _, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
			tb.Errorf("drop role %s: %v", role, err)
		}
		_ = admin.Close(ctx)
	})
	cc := admin.Config()
	return role, admin, secrets.DBCredentials{Host: cc.Host, Port: int(cc.Port), Database: cc.Database, SSLMode: "disable"}
}

func putCreds(tb testing.TB, srv *secretmanagertest.Server, c secrets.DBCredentials) string {
	tb.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	v, err := srv.Put(testSecret, b)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func open(tb testing.TB, cfg dbconn.Config, opts ...dbconn.Option) *dbconn.DB {
	tb.Helper()
	db, err := dbconn.Open(context.Background(), cfg, opts...)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(db.Close)
	return db
}

func currentUser(tb testing.TB, db *dbconn.DB) string {
	tb.Helper()
	var user string
	err := db.Do(context.Background(), func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, "SELECT current_user").Scan(&user)
	})
	if err != nil {
		tb.Fatalf("query through Do: %v", err)
	}
	return user
}

func TestOpenDatabaseURL(t *testing.T) {
	ctx := context.Background()
	db := open(t, dbconn.Config{DatabaseURL: testPostgresURL(t), ApplicationName: "dbconn-test", StatementTimeout: 1500 * time.Millisecond})
	if err := db.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	var timeout, app string
	err := db.Do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, "SELECT current_setting('statement_timeout'), current_setting('application_name')").Scan(&timeout, &app)
	})
	if err != nil {
		t.Fatal(err)
	}
	if timeout != "1500ms" || app != "dbconn-test" {
		t.Fatalf("statement_timeout=%q application_name=%q", timeout, app)
	}
	pc := db.Pool().Config()
	if pc.MaxConns != dbconn.DefaultMaxConns || pc.MaxConnLifetime != dbconn.DefaultMaxConnLifetime {
		t.Fatalf("pool MaxConns=%d MaxConnLifetime=%s, want defaults", pc.MaxConns, pc.MaxConnLifetime)
	}
	if v := db.CredentialsVersion(); v != "" {
		t.Fatalf("CredentialsVersion without a secret = %q", v)
	}

	// The statement timeout is enforced, not just reported.
	err = db.Do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(3)")
		return err
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("pg_sleep beyond the statement timeout: %v, want SQLSTATE 57014", err)
	}
}

func TestSecretRotation(t *testing.T) {
	ctx := context.Background()
	role, admin, base := testRole(t, "first-password")
	srv, client := secretmanagertest.Start(t)
	creds := base
	creds.Username, creds.Password = role, "first-password"
	putCreds(t, srv, creds)

	db := open(t, dbconn.Config{DBSecret: testSecret, MaxConns: 4}, dbconn.WithSecretClient(client))
	if got := currentUser(t, db); got != role {
		t.Fatalf("current_user = %q, want %q", got, role)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 1 {
		t.Fatalf("AccessSecretVersion calls after Open = %d, want 1", n)
	}
	if v := db.CredentialsVersion(); v != testSecret+"/versions/1" {
		t.Fatalf("CredentialsVersion = %q", v)
	}

	// Rotate: new password in the database and in a new secret version, then
	// drop every existing session so the next acquire must log in again.
	if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD 'second-password'", role)); err != nil {
		t.Fatal(err)
	}
	creds.Password = "second-password"
	putCreds(t, srv, creds)
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role); err != nil {
		t.Fatal(err)
	}
	db.Pool().Reset()

	// Several requests notice the rotation at once; all succeed and the
	// secret is read again exactly once.
	const callers = 4
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := make(chan struct{})
	for range callers {
		wg.Go(func() {
			<-start
			conn, err := db.Acquire(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Release()
			var one int
			errs <- conn.QueryRow(ctx, "SELECT 1").Scan(&one)
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("acquire after rotation: %v", err)
		}
	}
	if n := srv.Calls("AccessSecretVersion"); n != 2 {
		t.Fatalf("AccessSecretVersion calls = %d, want 2 (Open + one re-read)", n)
	}
	if v := db.CredentialsVersion(); v != testSecret+"/versions/2" {
		t.Fatalf("CredentialsVersion after rotation = %q", v)
	}
	if got := currentUser(t, db); got != role {
		t.Fatalf("current_user = %q", got)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 2 {
		t.Fatalf("healthy acquires read the secret again: %d calls", n)
	}
}

func TestWrongCredentialsInEveryVersion(t *testing.T) {
	testkit.RequirePasswordAuth(t, testkit.Postgres)
	ctx := context.Background()
	role, _, base := testRole(t, "the-real-password")
	srv, client := secretmanagertest.Start(t)
	creds := base
	creds.Username = role
	for _, pw := range []string{"wrong-one-xyzzy", "wrong-two-plugh"} {
		creds.Password = pw
		putCreds(t, srv, creds)
	}

	db := open(t, dbconn.Config{DBSecret: testSecret}, dbconn.WithSecretClient(client))
	_, err := db.Acquire(ctx)
	if err == nil {
		t.Fatal("Acquire succeeded with wrong credentials")
	}
	msg := err.Error()
	t.Logf("error shown to callers: %v", err)
	for _, pw := range []string{"wrong-one-xyzzy", "wrong-two-plugh", "the-real-password"} {
		if strings.Contains(msg, pw) {
			t.Fatalf("error reveals a password: %v", err)
		}
	}
	if !dbconn.IsAuthError(err) || !strings.Contains(msg, role) || !strings.Contains(msg, testSecret+"/versions/2") {
		t.Fatalf("error is not a clear authentication failure naming the role and secret version: %v", err)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 2 {
		t.Fatalf("AccessSecretVersion calls = %d, want 2 (Open + one re-read)", n)
	}

	// A second failure right away is not worth another read.
	if _, err := db.Acquire(ctx); !dbconn.IsAuthError(err) {
		t.Fatalf("second Acquire: %v", err)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 2 {
		t.Fatalf("AccessSecretVersion calls after a quick second failure = %d, want 2", n)
	}
}

func TestReReadFailure(t *testing.T) {
	ctx := context.Background()
	role, admin, base := testRole(t, "before")
	srv, client := secretmanagertest.Start(t)
	creds := base
	creds.Username, creds.Password = role, "before"
	putCreds(t, srv, creds)
	db := open(t, dbconn.Config{DBSecret: testSecret}, dbconn.WithSecretClient(client), dbconn.WithMinRefreshInterval(0))

	if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD 'after'", role)); err != nil {
		t.Fatal(err)
	}
	creds.Password = "after"
	putCreds(t, srv, creds)

	// Secret Manager refuses the re-read: the caller sees both problems.
	srv.FailNext("AccessSecretVersion", status.Error(codes.PermissionDenied, "injected denial"))
	_, err := db.Acquire(ctx)
	if !dbconn.IsAuthError(err) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Acquire error = %v, want the auth failure and the PermissionDenied re-read", err)
	}
	// With no minimum interval the next request reads again and recovers.
	if got := currentUser(t, db); got != role {
		t.Fatalf("current_user = %q", got)
	}
	if n := srv.Calls("AccessSecretVersion"); n != 3 {
		t.Fatalf("AccessSecretVersion calls = %d, want 3 (Open, refused re-read, re-read)", n)
	}
}

func TestSecretReadFailures(t *testing.T) {
	ctx := context.Background()
	srv, client := secretmanagertest.Start(t)
	t.Run("missing secret", func(t *testing.T) {
		_, err := dbconn.Open(ctx, dbconn.Config{DBSecret: "projects/test/secrets/absent"}, dbconn.WithSecretClient(client))
		if err == nil || !strings.Contains(err.Error(), "DB_SECRET") || !strings.Contains(err.Error(), "NotFound") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no host without cloud sql", func(t *testing.T) {
		if _, err := srv.Put("projects/test/secrets/nohost", []byte(`{"username":"u","password":"pw-zzz","database":"d"}`)); err != nil {
			t.Fatal(err)
		}
		_, err := dbconn.Open(ctx, dbconn.Config{DBSecret: "projects/test/secrets/nohost"}, dbconn.WithSecretClient(client))
		if err == nil || !strings.Contains(err.Error(), "no host") || strings.Contains(err.Error(), "pw-zzz") {
			t.Fatalf("err = %v", err)
		}
	})
}

// fakeDialer stands in for cloudsqlconn.Dialer: it records what it was asked
// to dial and connects to the local PostgreSQL instead.
type fakeDialer struct {
	addr string

	mu        sync.Mutex
	instances []string
	optCounts []int
}

func (d *fakeDialer) Dial(ctx context.Context, instance string, opts ...cloudsqlconn.DialOption) (net.Conn, error) {
	d.mu.Lock()
	d.instances = append(d.instances, instance)
	d.optCounts = append(d.optCounts, len(opts))
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

func (d *fakeDialer) seen() ([]string, []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.instances...), append([]int(nil), d.optCounts...)
}

func TestCloudSQLWithSecret(t *testing.T) {
	role, _, base := testRole(t, "cloudsql-password")
	srv, client := secretmanagertest.Start(t)
	creds := base
	creds.Username, creds.Password = role, "cloudsql-password"
	// Through the connector host and sslmode must be ignored: this host does
	// not resolve and the local server has no TLS.
	creds.Host, creds.SSLMode = "db.invalid", "verify-full"
	putCreds(t, srv, creds)

	d := &fakeDialer{addr: net.JoinHostPort(base.Host, fmt.Sprint(base.Port))}
	const instance = "my-project:europe-west1:tsdb"
	db := open(t, dbconn.Config{CloudSQLInstance: instance, DBSecret: testSecret, CloudSQLPrivateIP: true},
		dbconn.WithSecretClient(client), dbconn.WithDialer(d))
	if got := currentUser(t, db); got != role {
		t.Fatalf("current_user = %q, want %q", got, role)
	}
	instances, optCounts := d.seen()
	if len(instances) != 1 || instances[0] != instance {
		t.Fatalf("dialer saw %v, want exactly one dial of %s", instances, instance)
	}
	if optCounts[0] != 1 {
		t.Fatalf("dial options = %d, want 1 (private IP)", optCounts[0])
	}
}

func TestCloudSQLWithIAMUser(t *testing.T) {
	base := testPostgresURL(t)
	cc, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSWORD", "must-not-be-used")
	d := &fakeDialer{addr: net.JoinHostPort(cc.Host, fmt.Sprint(cc.Port))}
	const instance = "my-project:europe-west1:tsdb"
	const user = "ingest@my-project.iam"
	db := open(t, dbconn.Config{CloudSQLInstance: instance, DBIAMUser: user, DBName: cc.Database}, dbconn.WithDialer(d))

	// The local server knows no such role and wants a password, so the login
	// fails; what matters is what was sent and where it was dialled.
	_, err = db.Acquire(context.Background())
	t.Logf("error shown to callers: %v", err)
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "cloud sql instance "+instance) {
		t.Fatalf("Acquire error = %v, want a connect error naming the instance", err)
	}
	if ce.Config.User != user || ce.Config.Password != "" || ce.Config.Database != cc.Database || ce.Config.TLSConfig != nil {
		t.Fatalf("connect config user=%q password set=%v database=%q tls=%v",
			ce.Config.User, ce.Config.Password != "", ce.Config.Database, ce.Config.TLSConfig != nil)
	}
	instances, optCounts := d.seen()
	if len(instances) != 1 || instances[0] != instance || optCounts[0] != 0 {
		t.Fatalf("dialer saw %v with %v options", instances, optCounts)
	}
}

func TestIsAuthError(t *testing.T) {
	auth := &pgconn.PgError{Code: "28P01", Message: "password authentication failed"}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"invalid password", auth, true},
		{"invalid authorization", &pgconn.PgError{Code: "28000"}, true},
		{"wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", auth)), true},
		{"joined", errors.Join(errors.New("tls refused"), auth), true},
		{"other sqlstate", &pgconn.PgError{Code: "53300"}, false},
		{"plain error", errors.New("28P01"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := dbconn.IsAuthError(tc.err); got != tc.want {
				t.Fatalf("IsAuthError = %v, want %v", got, tc.want)
			}
		})
	}
}
