// Package testkit gives tests a fresh, migrated database on a real server:
// TimescaleDB from TEST_TIMESCALEDB_URL, plain PostgreSQL from
// TEST_POSTGRES_URL. Each call creates its own database (and login roles),
// dropped when the test ends, so tests may run in parallel.
//
// When a variable is unset the test is skipped with a message naming it,
// except under CI=true, where a missing database is a failure: CI must never
// pass by skipping.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/migrations"
)

// Kind names a database server flavour.
type Kind string

const (
	TimescaleDB Kind = "timescaledb"
	Postgres    Kind = "postgres"
)

// Kinds lists every flavour the project supports; tests run against each.
var Kinds = []Kind{TimescaleDB, Postgres}

// EnvVar is the variable holding a superuser URL for kind.
func EnvVar(k Kind) string {
	if k == TimescaleDB {
		return "TEST_TIMESCALEDB_URL"
	}
	return "TEST_POSTGRES_URL"
}

// DB is one throwaway database with the project's schema applied.
type DB struct {
	Kind Kind
	Name string
	// URL connects as the server's superuser to this database.
	URL string
	// Admin is a superuser pool on this database.
	Admin *pgxpool.Pool
}

// ServerURL returns the superuser URL for kind, skipping (or failing under
// CI=true) when its variable is unset.
func ServerURL(tb testing.TB, k Kind) string {
	tb.Helper()
	v := os.Getenv(EnvVar(k))
	if v == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("testkit: %s is not set, and CI=true forbids skipping database tests", EnvVar(k))
		}
		tb.Skipf("testkit: %s is not set; run `make test` or set it to a %s superuser URL", EnvVar(k), k)
	}
	return v
}

// New creates a database on the kind's server, applies every migration and
// returns it. Options go to migrations.Up.
func New(tb testing.TB, k Kind, opts ...migrations.Options) *DB {
	tb.Helper()
	server := ServerURL(tb, k)
	name := "apigee_test_" + randomSuffix(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		tb.Fatalf("testkit: connect %s: %v", EnvVar(k), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("testkit: create database: %v", err)
	}
	tb.Cleanup(func() { dropDatabase(tb, server, name) })

	dbURL := withDatabase(tb, server, name)
	var o migrations.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if _, err := migrations.Up(ctx, dbURL, o); err != nil {
		tb.Fatalf("testkit: migrate %s: %v", k, err)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		tb.Fatalf("testkit: pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return &DB{Kind: k, Name: name, URL: dbURL, Admin: pool}
}

// AdminConn is one connection of Admin, for a test whose statements need
// one session (temporary tables, settings); it is released at cleanup.
func (db *DB) AdminConn(tb testing.TB) *pgxpool.Conn {
	tb.Helper()
	conn, err := db.Admin.Acquire(context.Background())
	if err != nil {
		tb.Fatalf("testkit: acquire: %v", err)
	}
	tb.Cleanup(conn.Release)
	return conn
}

// Each runs fn as a subtest against a fresh database of every kind.
func Each(t *testing.T, fn func(t *testing.T, db *DB)) {
	t.Helper()
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			fn(t, New(t, k))
		})
	}
}

// Login creates a login role with a random password that is a member of
// the given group roles, and returns a URL connecting as it to this
// database. The role is dropped when the test ends.
func (d *DB) Login(tb testing.TB, groups ...string) (role, dsn string) {
	tb.Helper()
	role = "t_" + randomSuffix(tb)
	password := randomSuffix(tb) + randomSuffix(tb)
	ctx := context.Background()
	stmt := fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), password)
	if len(groups) > 0 {
		quoted := make([]string, len(groups))
		for i, g := range groups {
			quoted[i] = pgx.Identifier{g}.Sanitize()
		}
		stmt += " IN ROLE " + strings.Join(quoted, ", ")
	}
	if _, err := d.Admin.Exec(ctx, stmt); err != nil {
		tb.Fatalf("testkit: create role: %v", err)
	}
	tb.Cleanup(func() {
		// The database may be gone already; the role is cluster-wide.
		_, _ = d.Admin.Exec(context.Background(), "DROP OWNED BY "+pgx.Identifier{role}.Sanitize())
		_, _ = d.Admin.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
		_, _ = d.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
	})
	u, err := url.Parse(d.URL)
	if err != nil {
		tb.Fatalf("testkit: %v", err)
	}
	u.User = url.UserPassword(role, password)
	return role, u.String()
}

// LoginPool is Login, then a pool logged in as that role (members of the
// groups, as a function's login is), closed when the test ends.
func (d *DB) LoginPool(tb testing.TB, groups ...string) *pgxpool.Pool {
	tb.Helper()
	_, dsn := d.Login(tb, groups...)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		tb.Fatalf("testkit: pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// Connect opens a single connection to dsn, closed when the test ends.
func Connect(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		tb.Fatalf("testkit: connect: %v", err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func dropDatabase(tb testing.TB, server, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		tb.Logf("testkit: drop %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		tb.Logf("testkit: drop %s: %v", name, err)
	}
}

func withDatabase(tb testing.TB, server, name string) string {
	u, err := url.Parse(server)
	if err != nil {
		tb.Fatalf("testkit: parse server url: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func randomSuffix(tb testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatalf("testkit: %v", err)
	}
	return hex.EncodeToString(b)
}
